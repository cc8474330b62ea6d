"""Reading a job's logs: stored at the end, live from Ray while it runs, split for providers.

Stored logs (up to `GATEWAY_LOG_MAX_BYTES`) are streamed from storage in chunks: decoded incrementally (a
UTF-8 sequence split across chunks is kept whole), filtered line by line for providers' functions, and
JSON-escaped piece by piece, so a reader never holds the whole log in memory (only the longest line).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator

from ..models import Job, JobStatus
from ..state import GatewayState
from ..storage.base import ObjectNotFound

_PUBLIC = "[PUBLIC]"
_PRIVATE = "[PRIVATE]"
_PREFIXED = re.compile(r"^(?P<head>.*?)(?P<tag>\[PUBLIC\]|\[PRIVATE\])\s?(?P<rest>.*)$")
LOG_CHUNK_SIZE = 256 * 1024


def _user_line(line: str) -> str:
    """One line (with its line break) as the function's user sees it: "" for a `[PRIVATE]` line."""
    match = _PREFIXED.match(line)
    if match is None:
        return line
    if match.group("tag") == _PUBLIC:
        return match.group("head") + match.group("rest") + ("\n" if line.endswith("\n") else "")
    return ""


def split_logs(raw: str, *, for_provider: bool) -> str:
    """User view: drop `[PRIVATE]` lines and strip `[PUBLIC]` tags. Provider view: everything, as is.

    Lines that carry no tag are user-visible (print output, tracebacks); the provider sees all lines.
    """
    if for_provider:
        return raw
    return "".join(_user_line(line) for line in raw.splitlines(keepends=True))


class UserLogFilter:
    """`split_logs(..., for_provider=False)` over text arriving in pieces: same output, one line held back.

    The last line of what has arrived is held back even when it ends with a line break, because a `\\r`
    followed by a `\\n` in the next piece is one line break, not two.
    """

    def __init__(self) -> None:
        self._carry = ""

    def feed(self, text: str) -> str:
        if not text:
            return ""
        lines = (self._carry + text).splitlines(keepends=True)
        self._carry = lines.pop()
        return "".join(_user_line(line) for line in lines)

    def finish(self) -> str:
        rest, self._carry = self._carry, ""
        return "".join(_user_line(line) for line in rest.splitlines(keepends=True))


async def _decoded(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[str]:
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


async def _one(text: str) -> AsyncIterator[str]:
    if text:
        yield text


async def _filtered(pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    log_filter = UserLogFilter()
    async for piece in pieces:
        kept = log_filter.feed(piece)
        if kept:
            yield kept
    kept = log_filter.finish()
    if kept:
        yield kept


async def open_raw_job_logs(state: GatewayState, job: Job) -> AsyncIterator[str]:
    """The job's whole log text in pieces: the stored copy once it ended, Ray's live logs while it runs.

    Whether stored logs exist (and whether storage answers) is settled before this returns: the first
    chunk is read here, so a storage outage raises now, not in the middle of a response.
    """
    if job.logs_key:
        chunks = state.storage.open_stream(job.logs_key, chunk_size=LOG_CHUNK_SIZE)
        try:
            first = await anext(chunks)
        except (ObjectNotFound, StopAsyncIteration):
            return _one("")
        return _decoded(first, chunks)
    if (
        state.engine is not None
        and job.ray_submission_id
        and JobStatus(job.status) in (JobStatus.PENDING, JobStatus.RUNNING)
    ):
        return _one(await state.engine.live_logs(job.id, job.ray_submission_id) or "")
    return _one("")


async def open_job_logs(
    state: GatewayState, job: Job, *, provider_program: bool, for_provider: bool
) -> AsyncIterator[str]:
    """Logs as one reader should see them, in pieces; user programs' logs are shown whole to their author."""
    raw = await open_raw_job_logs(state, job)
    if not provider_program or for_provider:
        return raw
    return _filtered(raw)


async def raw_job_logs(state: GatewayState, job: Job) -> str:
    """The job's whole log text at once (small logs, tests)."""
    return "".join([piece async for piece in await open_raw_job_logs(state, job)])


async def read_job_logs(state: GatewayState, job: Job, *, provider_program: bool, for_provider: bool) -> str:
    """Logs as one reader should see them, at once."""
    pieces = await open_job_logs(state, job, provider_program=provider_program, for_provider=for_provider)
    return "".join([piece async for piece in pieces])


async def logs_json_body(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """`{"logs": "<text>"}` exactly as FastAPI renders `JobLogsOut`, built piece by piece."""
    yield b'{"logs":"'
    async for piece in pieces:
        yield _escape(piece)
    yield b'"}'


def _escape(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")
