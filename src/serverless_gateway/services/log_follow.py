"""Following a job's log live: `GET /jobs/{id}/logs/?follow=true` as Server-Sent Events.

Each event carries whole lines of the log (one `data:` field per line) and, as its `id`, the byte offset after
them; a client that reconnects with `Last-Event-ID` (or `?offset=`) goes on from there. While the job runs, the
lines come from the job's shared tail of Ray (`engine/live_logs.py`): a new line is sent as soon as Ray streams it,
and many followers cost one tail. After the job ended, the rest is read from the stored log, then a last
`event: end` carries the job's status. Readers of a provider's function see its log without the `[PRIVATE]`
lines, as in every other read.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator

from ..models import Job, JobStatus
from ..state import GatewayState
from .log_windows import read_log_window

KEEPALIVE_SECONDS = 15.0
"""A comment line at least this often, so proxies do not close a quiet stream."""
WAIT_SECONDS = 1.0
"""How long one wait for new log lines lasts before the job's status is looked at again."""
QUEUED_POLL_SECONDS = 0.5
"""How often a job that has no log yet (queued, or its cluster starting) is looked at."""
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(*, data: str, event: str | None = None, event_id: int | None = None) -> bytes:
    """One event; `data` is split into lines (an SSE field ends at any of \\r\\n, \\r and \\n)."""
    fields = []
    if event is not None:
        fields.append(f"event: {event}")
    if event_id is not None:
        fields.append(f"id: {event_id}")
    fields.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(fields) + "\n\n").encode("utf-8")


async def _job(state: GatewayState, job_id: uuid.UUID) -> Job | None:
    async with state.read_sessions() as session:
        return await session.get(Job, job_id, populate_existing=True)


def _live(job: Job) -> bool:
    return job.ray_submission_id is not None and job.logs_key is None and not JobStatus(job.status).is_terminal()


async def follow_log_events(
    state: GatewayState, job_id: uuid.UUID, *, offset: int, user_view: bool
) -> AsyncIterator[bytes]:
    """The job's log from byte `offset` as events, until it ended and all of its log was sent."""
    yield b": following the job's log\n\n"
    last_sent = time.monotonic()
    while True:
        job = await _job(state, job_id)
        if job is None:  # deleted while followed
            yield sse_event(event="end", data=json.dumps({"status": None, "next_offset": offset}))
            return
        ended = JobStatus(job.status).is_terminal()
        window = await read_log_window(state, job, offset=offset, tail=None, user_view=user_view)
        moved = window.next_offset != offset
        offset = window.next_offset
        if window.text:
            text = window.text[:-1] if window.text.endswith("\n") else window.text
            yield sse_event(data=text, event_id=offset)
            last_sent = time.monotonic()
        if moved:
            continue  # a window holds at most 4 MiB: there may be more at once
        if ended:
            yield sse_event(event="end", data=json.dumps({"status": job.status, "next_offset": offset}))
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        if _live(job) and state.engine is not None and job.ray_submission_id is not None:
            await state.engine.wait_live_log(job.id, job.ray_submission_id, offset, WAIT_SECONDS)
        else:
            await asyncio.sleep(QUEUED_POLL_SECONDS)
