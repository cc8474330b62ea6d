"""Bodies the jobs endpoints read by hand: the same fields as JSON or as a form, with a size limit."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.types import Message

from ..errors import BadRequest, PayloadTooLarge
from ..schemas.jobs import SubStatus


def form_or_json_body(schema: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """OpenAPI text for a body read by hand: the same fields as JSON, a url-encoded form or a multipart form."""
    content = {
        media: {"schema": schema}
        for media in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
    }
    return {"requestBody": {"required": required, "content": content}}


RESULT_BODY = form_or_json_body(
    {
        "type": "object",
        "required": ["result"],
        "properties": {"result": {"type": "string", "description": "The result as a JSON string."}},
    },
    required=True,
)
SUB_STATUS_BODY = form_or_json_body(
    {
        "type": "object",
        "required": ["sub_status"],
        "properties": {"sub_status": {"type": "string", "enum": [s.value for s in SubStatus]}},
    },
    required=True,
)
STOP_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"service": {"description": "Ignored: the client's runtime service, JSON-encoded."}},
                }
            }
        },
    }
}


def limited_body(request: Request, limit: int) -> Request:
    """The same request, refusing (413) a body larger than `limit` bytes, by Content-Length or while reading."""
    message = f"The request body is larger than the limit of {limit} bytes."
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(message)
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        chunk = await receive()
        if chunk["type"] == "http.request":
            received += len(chunk.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(message)
        return chunk

    return Request(request.scope, counting_receive)


async def read_fields(request: Request, *, limit: int) -> dict[str, Any]:
    """A JSON object body or a form body (url-encoded or multipart) as a dict; {} when there is no body."""
    limited = limited_body(request, limit)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await limited.form(max_part_size=limit)
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[name] = (await value.read()).decode("utf-8", errors="replace")
            else:
                fields[name] = value
        await form.close()
        return fields
    body = await limited.body()
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("Invalid request: the body is neither JSON nor a form.") from None
    if not isinstance(parsed, dict):
        raise BadRequest("Invalid request: the body must be a JSON object.")
    return parsed
