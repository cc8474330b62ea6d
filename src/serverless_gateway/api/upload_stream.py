"""Reading one file part of a multipart/form-data body as a stream of chunks, never spooling it to disk."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import BadRequest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


@dataclass(frozen=True, slots=True)
class _PartStart:
    name: str
    filename: str | None


@dataclass(frozen=True, slots=True)
class _PartData:
    data: bytes


class _PartEnd:
    pass


_Event = _PartStart | _PartData | _PartEnd


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class MultipartFileStream:
    """The file sent in form field `field`: `await open()` gives its name, then `chunks()` its bytes as they arrive.

    Other fields are read past and dropped; the body guard (`api/body_guard.py`) bounds the whole body.
    """

    def __init__(self, request: Request, *, field: str):
        media, params = parse_options_header(request.headers.get("content-type"))
        boundary = params.get(b"boundary")
        if media != b"multipart/form-data" or not boundary:
            raise BadRequest(f"Invalid request: send the file as multipart/form-data in the field {field!r}.")
        self._field = field
        self._body = request.stream()
        self._events: deque[_Event] = deque()
        self._finished = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = _decode(options.get(b"name", b""))
        filename = options.get(b"filename")
        self._events.append(_PartStart(name=name, filename=None if filename is None else _decode(filename)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(_PartData(bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self._events.append(_PartEnd())

    async def _more(self) -> bool:
        """Feed the parser the next piece of the body; False once the body has ended."""
        if self._finished:
            return False
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            self._finished = True
            try:
                self._parser.finalize()
            except FormParserError:
                raise BadRequest("Invalid request: malformed multipart body.") from None
            return False
        try:
            self._parser.write(chunk)
        except FormParserError:
            raise BadRequest("Invalid request: malformed multipart body.") from None
        return True

    async def open(self) -> str:
        """Read up to the start of the file part and answer its file name (400 when there is none)."""
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, _PartStart) and event.name == self._field and event.filename is not None:
                    return event.filename
            if not await self._more():
                raise BadRequest(f"Invalid request: {self._field}: Field required (a file).")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes, up to the end of its part."""
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, _PartData):
                    if event.data:
                        yield event.data
                elif isinstance(event, _PartEnd):
                    return
            if not await self._more():
                raise BadRequest("Invalid request: the multipart body ended inside the file.")
