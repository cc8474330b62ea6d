"""Windows of a job's log for polling readers: from a byte offset, or its last lines, with the next offset.

Offsets count bytes of the log as stored (UTF-8), for every reader alike: a reader who filters (the user of
a provider's function) gets fewer bytes of text than the window spans, and continues from `next_offset`.
A window starts at a line start (an offset inside a line skips to the next one, so a `[PRIVATE]` tag at
the start of a line is never cut off) and ends at a line end, at most `MAX_WINDOW_BYTES` later; only a
window of one longer line is cut inside it. Stored logs are read from the offset on (a range read), so a
window costs its own size in memory, whatever the log's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..engine.joblogs import extract_result
from ..engine.launcher import RESULT_MARKER
from ..models import Job, JobStatus
from ..state import GatewayState
from ..storage.base import ObjectNotFound
from .logs import LOG_CHUNK_SIZE, ended_unstored, split_logs

MAX_WINDOW_BYTES = 4 * 1024 * 1024
MAX_TAIL_LINES = 10_000
TAIL_SCAN_BYTES = 4 * 1024 * 1024
"""`tail=N` looks back at most this far: fewer lines come back when the last N are longer in total."""


@dataclass(frozen=True, slots=True)
class LogWindow:
    text: str
    next_offset: int


async def _read(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Up to `limit` bytes of the stream (and at most one chunk more, cut off)."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return b"".join(parts)[:limit]


@dataclass(frozen=True, slots=True)
class _Bytes:
    data: bytes
    start: int
    """Where `data` starts: the offset asked for, or later when a running job's log no longer holds it."""
    size: int | None
    growing: bool


async def _log_bytes(state: GatewayState, job: Job, start: int, limit: int) -> _Bytes:
    """Up to `limit` bytes from `start`, the log's size when known, and whether the log can still grow."""
    if job.logs_key:
        info = await state.storage.stat(job.logs_key)
        if info is None:
            return _Bytes(b"", start, 0, False)
        if limit <= 0:
            return _Bytes(b"", start, info.size, False)
        try:
            chunks = state.storage.open_stream(job.logs_key, chunk_size=LOG_CHUNK_SIZE, start=start)
            return _Bytes(await _read(chunks, limit), start, info.size, False)
        except ObjectNotFound:
            return _Bytes(b"", start, 0, False)
    if state.engine is None or job.ray_submission_id is None:
        return _Bytes(b"", start, 0, False)
    if ended_unstored(job):
        whole = (await state.engine.unstored_logs(job.id, job.ray_submission_id) or "").encode("utf-8")
        return _Bytes(whole[start : start + max(limit, 0)], start, len(whole), False)
    if JobStatus(job.status) not in (JobStatus.PENDING, JobStatus.RUNNING):
        return _Bytes(b"", start, 0, False)
    got = await state.engine.live_log_bytes(job.id, job.ray_submission_id, start, limit)
    if got is None:
        return _Bytes(b"", start, 0, True)
    return _Bytes(got.data, got.start, got.total, True)


def _whole_characters(data: bytes) -> int:
    """How much of `data` holds whole UTF-8 characters: a character whose bytes are cut off is left out."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[len(data) - back]
        if lead & 0xC0 != 0x80:
            width = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
            return len(data) - back if width > back else len(data)
    return len(data)


def _window(data: bytes, *, base: int, aligned: bool, complete: bool) -> tuple[bytes, int]:
    """The part of `data` (which starts at byte `base`) a window serves, and the offset after it.

    `aligned`: `data` starts at a line start; `complete`: `data` reaches the end of a log that will not grow.
    """
    if not aligned:
        newline = data.find(b"\n")
        if newline < 0:
            return b"", base + len(data)  # all inside one line that began earlier
        base, data = base + newline + 1, data[newline + 1 :]
    if complete:
        return data, base + len(data)
    last = data.rfind(b"\n")
    if last >= 0:
        return data[: last + 1], base + last + 1
    if len(data) < MAX_WINDOW_BYTES:
        return b"", base  # a line still being written: wait for its end
    cut = _whole_characters(data)  # a window of one long line ends between two characters
    return data[:cut], base + cut


async def read_log_window(
    state: GatewayState, job: Job, *, offset: int | None, tail: int | None, user_view: bool
) -> LogWindow:
    """The window a reader asked for (`offset`: from that byte; `tail`: the last lines), filtered for users."""
    if tail is not None:
        size = (await _log_bytes(state, job, 0, 0)).size
        start, limit = max(0, (size or 0) - TAIL_SCAN_BYTES), TAIL_SCAN_BYTES
    else:
        start, limit = offset or 0, MAX_WINDOW_BYTES
    before = 1 if start > 0 else 0  # one byte more, to see whether `start` is a line start
    got = await _log_bytes(state, job, start - before, limit + before)
    data = got.data
    if got.start == start - before:
        aligned = before == 0 or data[:1] == b"\n"
        data = data[before:]
    else:  # a running job's log no longer holds `start`: go on from the first whole line kept
        start, aligned = got.start, got.start == 0
    reaches_end = got.size is not None and start + len(data) >= got.size
    served, next_offset = _window(data, base=start, aligned=aligned, complete=reaches_end and not got.growing)
    text = served.decode("utf-8", errors="replace")
    if got.growing and RESULT_MARKER in text:  # the launcher's result line, removed from stored logs too
        text, _ = extract_result(text)
    if user_view:
        text = split_logs(text, for_provider=False)
    if tail is not None:
        text = _last_lines(text, tail)
    return LogWindow(text=text, next_offset=next_offset)


def _last_lines(text: str, count: int) -> str:
    """The last `count` lines of `text` (lines end at `\\n`; a last line without one counts too)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
        return "\n".join(lines[-count:]) + ("\n" if lines else "")
    return "\n".join(lines[-count:])
