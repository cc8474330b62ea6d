"""An ended job's log, read from Ray with bounded memory, to be stored once.

Most logs are small: one GET of Ray's whole log answers them at once, read only while it stays under
`QUICK_LOG_BYTES`. A bigger log is streamed instead (Ray's log tail), keeping only its last `max_bytes`, so a
job that printed 1 GiB costs the gateway its capped tail, never the whole text.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
import httpx

from ..services.json_check import loads_off_loop
from .log_tail import LogTail
from .ray_client import RayJobNotFound, RayUnavailable

if TYPE_CHECKING:
    from .ray_client import RayJobs

logger = logging.getLogger(__name__)

QUICK_LOG_BYTES = 8 * 1024 * 1024
"""A log whose JSON answer from Ray is at most this big is read whole; a bigger one is streamed."""
FINAL_LOG_SECONDS = 120.0
"""How long streaming an ended job's log from Ray may take (~1 GiB takes tens of seconds)."""


async def _whole_if_small(ray: RayJobs, submission_id: str, limit: int) -> str | None:
    """Ray's whole log of the job when its answer fits in `limit` bytes, else None (nothing more is read)."""
    url = f"{ray.address.rstrip('/')}/api/jobs/{submission_id}/logs"
    body = bytearray()
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as http,
            http.stream("GET", url, headers=ray.headers) as response,
        ):
            if response.status_code == 404:
                raise RayJobNotFound(f"Ray does not know job {submission_id}")
            if response.status_code != 200:
                raise RayUnavailable(f"Ray answered {response.status_code} for the log of {submission_id}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return None
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    return None
    except httpx.HTTPError as exc:
        raise RayUnavailable(f"could not read the log of {submission_id}: {exc}") from exc
    data = bytes(body)
    try:
        answer = await loads_off_loop(data)
        logs = answer["logs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RayUnavailable(f"Ray's log answer for {submission_id} is not what its API documents") from exc
    return logs if isinstance(logs, str) else ""


def _stream_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=30))


async def _streamed_tail(ray: RayJobs, submission_id: str, max_bytes: int, *, wait_end: bool) -> str:
    tail = LogTail(
        submission_id,
        address=ray.address,
        headers=ray.headers,
        window_bytes=max_bytes + 64 * 1024,
        max_failures=3,
        session_factory=_stream_session,
    )
    tail.start()
    try:
        if wait_end:
            finished = await tail.wait_done(FINAL_LOG_SECONDS)
        else:  # still exiting on Ray: what it holds now (Ray's stream starts after up to ~2 s)
            await tail.caught_up(quiet=1.5, timeout=15.0)
            finished = True
    finally:
        await tail.close()
    if tail.error is not None and tail.total == 0:
        if "(404)" in tail.error:
            raise RayJobNotFound(tail.error)
        raise RayUnavailable(tail.error)
    start, data = tail.bytes_since(0)
    if start > 0:  # the beginning was dropped: start at a whole line
        data = data[data.find(b"\n") + 1 :]
    if not finished:
        logger.warning("the log of %s streamed for over %.0f s; kept what had come", submission_id, FINAL_LOG_SECONDS)
    return data.decode("utf-8", errors="replace")


async def final_log(ray: RayJobs, submission_id: str, max_bytes: int, *, wait_end: bool) -> str:
    """The job's log as Ray holds it (at least its last `max_bytes`), in memory bounded by about `max_bytes`.

    `wait_end`: the job ended on Ray, so a streamed read goes on until Ray closes the stream; otherwise (a job
    that reported its own end and is still exiting) it takes what Ray holds now. Raises RayJobNotFound when
    Ray does not know the job and RayUnavailable when its log cannot be read.
    """
    whole = await _whole_if_small(ray, submission_id, min(QUICK_LOG_BYTES, max(max_bytes, 64 * 1024)))
    if whole is not None:
        return whole
    return await _streamed_tail(ray, submission_id, max_bytes, wait_end=wait_end)
