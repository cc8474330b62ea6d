"""Reading a job's logs: stored at the end, live from Ray while it runs, split for providers.

Stored logs (up to `GATEWAY_LOG_MAX_BYTES`) are streamed from storage in chunks: decoded incrementally (a
UTF-8 sequence split across chunks is kept whole), filtered line by line for providers' functions, and
JSON-escaped piece by piece, so a reader never holds the whole log in memory (only the longest line).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..models import Job, JobStatus
from ..state import GatewayState
from ..storage.base import ObjectNotFound
from .json_stream import decoded_chunks, string_field_body

_PUBLIC = "[PUBLIC]"
_PRIVATE = "[PRIVATE]"
LOG_CHUNK_SIZE = 256 * 1024
MAX_FILTERED_LINE = 1024 * 1024
"""A longer line of a provider's function is not shown to its user: its tag could come after any cut."""
_LONG_LINE_NOTE = f"[gateway] a line longer than {MAX_FILTERED_LINE} characters is not shown\n"


def _user_line(line: str) -> str:
    """One line (with its `\\n`) as the function's user sees it: "" when `[PRIVATE]` is anywhere in it."""
    if _PRIVATE in line:
        return ""
    if _PUBLIC not in line:
        return line
    head, _, rest = line.partition(_PUBLIC)
    return head + (rest[1:] if rest[:1] in (" ", "\t") else rest)


def _user_lines(text: str, max_line: int) -> str:
    """`_user_line` over each line of `text` (lines end with `\\n`, the last one may not)."""
    if _PRIVATE not in text and _PUBLIC not in text and len(text) <= max_line:
        return text
    lines = text.split("\n")
    last = lines.pop()
    kept = [_LONG_LINE_NOTE if len(line) > max_line else _user_line(line + "\n") for line in lines]
    return "".join(kept) + (_LONG_LINE_NOTE if len(last) > max_line else _user_line(last))


def split_logs(raw: str, *, for_provider: bool) -> str:
    """User view: drop lines holding `[PRIVATE]` and strip `[PUBLIC]` tags. Provider view: everything, as is.

    Lines end at `\\n` only (a `\\r` or any other separator stays inside its line, so it cannot end a
    private line early); lines that carry no tag are user-visible (print output, tracebacks).
    """
    if for_provider:
        return raw
    log_filter = UserLogFilter()
    return log_filter.feed(raw) + log_filter.finish()


class UserLogFilter:
    """`split_logs(..., for_provider=False)` over text arriving in pieces; holds back at most one line.

    A line longer than `MAX_FILTERED_LINE` is left out whole (with a note), so memory stays bounded.
    """

    def __init__(self, max_line: int = MAX_FILTERED_LINE) -> None:
        self._carry = ""
        self._skipping = False
        self._max_line = max_line

    def feed(self, text: str) -> str:
        data, self._carry = self._carry + text, ""
        start = 0
        if self._skipping:
            start = data.find("\n") + 1
            if start == 0:
                return ""
            self._skipping = False
        cut = data.rfind("\n", start) + 1
        complete = _user_lines(data[start:cut], self._max_line) if cut > start else ""
        rest = data[max(cut, start) :]
        if len(rest) > self._max_line:
            self._skipping = True
            return complete + _LONG_LINE_NOTE
        self._carry = rest
        return complete

    def finish(self) -> str:
        rest, self._carry = self._carry, ""
        if self._skipping:
            self._skipping = False
            return ""
        return _user_line(rest)


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
        return decoded_chunks(chunks, first)
    if state.engine is None or not job.ray_submission_id:
        return _one("")
    if JobStatus(job.status) in (JobStatus.PENDING, JobStatus.RUNNING):
        return _one(await state.engine.live_logs(job.id, job.ray_submission_id) or "")
    if ended_unstored(job):
        return _one(await state.engine.unstored_logs(job.id, job.ray_submission_id) or "")
    return _one("")


def ended_unstored(job: Job) -> bool:
    """Its launcher reported its end a moment ago and its log is not stored yet (the job is final before its log
    is, see engine/reported_end.py): the log is read from Ray once."""
    return JobStatus(job.status).is_terminal() and not job.ray_confirmed and not job.logs_key


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


def logs_json_body(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """`{"logs": "<text>"}` exactly as FastAPI renders `JobLogsOut`, built piece by piece."""
    return string_field_body("logs", pieces)
