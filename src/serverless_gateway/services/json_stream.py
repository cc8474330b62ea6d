"""JSON response bodies built piece by piece from text held in storage, so no reader holds a whole object."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator


async def decoded_chunks(rest: AsyncIterator[bytes], first: bytes = b"") -> AsyncIterator[str]:
    """UTF-8 chunks (`first`, then `rest`) as text; a character split across chunks stays whole, bad bytes U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(first)
    if text:
        yield text
    try:
        async for chunk in rest:
            text = decoder.decode(chunk)
            if text:
                yield text
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()
    text = decoder.decode(b"", final=True)
    if text:
        yield text


def escape_json(text: str) -> bytes:
    """`text` as the inside of a JSON string (no quotes), UTF-8 encoded."""
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")


async def string_field_body(field: str, pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """`{"<field>":"<the pieces, escaped>"}`, exactly as FastAPI would render a model of one string field."""
    yield b'{"' + escape_json(field) + b'":"'
    async for piece in pieces:
        yield escape_json(piece)
    yield b'"}'


async def spliced_json_body(head: bytes, field: str, value: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The JSON object `head` with one more field whose value is JSON text sent as it is (not decoded)."""
    separator = b"," if head.strip() != b"{}" else b""
    yield head.rstrip()[:-1] + separator + b'"' + escape_json(field) + b'":'
    async for chunk in value:
        yield chunk
    yield b"}"
