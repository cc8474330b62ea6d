"""Bodies the jobs endpoints read by hand: the same fields as JSON or as a form."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from ..errors import BadRequest
from ..schemas.jobs import SubStatus
from ..services.json_check import loads_off_loop
from .body_guard import body_limit


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
        "examples": [{"result": '{"counts": {"00": 512, "11": 512}}'}],
    },
    required=True,
)
SUB_STATUS_BODY = form_or_json_body(
    {
        "type": "object",
        "required": ["sub_status"],
        "properties": {"sub_status": {"type": "string", "enum": [s.value for s in SubStatus]}},
        "examples": [{"sub_status": SubStatus.MAPPING.value}],
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
                    "examples": [{}],
                }
            }
        },
    }
}


async def read_fields(request: Request) -> dict[str, Any]:
    """A JSON object body or a form body (url-encoded or multipart) as a dict; {} when there is no body.

    The body guard (`api/body_guard.py`) has already bounded the body; one form field may fill all of it.
    """
    max_part_bytes = body_limit(request.method, request.url.path, request.app.state.gateway.settings).max_bytes
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form(max_part_size=max_part_bytes)
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[name] = (await value.read()).decode("utf-8", errors="replace")
            else:
                fields[name] = value
        await form.close()
        return fields
    body = await request.body()
    if not body.strip():
        return {}
    try:  # a result body can be tens of MiB: decoding it would hold the event loop for a second
        parsed = await loads_off_loop(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("Invalid request: the body is neither JSON nor a form.") from None
    if not isinstance(parsed, dict):
        raise BadRequest("Invalid request: the body must be a JSON object.")
    return parsed


BodyFieldsDep = Annotated[dict[str, Any], Depends(read_fields)]
"""The body's fields; list it before the session so no database connection waits on a slow client."""
