"""A running job's log as readers see it: one shared, bounded tail of Ray's log stream per job.

Every reader of a PENDING/RUNNING job (a whole-log GET, an `?offset=` window, an SSE follower) reads the same
`LogTail` of the job's Ray cluster: however many readers and however large the log, the gateway keeps at most
`LIVE_WINDOW_BYTES` of it per job and Ray streams it once. Offsets count bytes of Ray's log (UTF-8), as the
stored copy does once the job ended.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..db import SessionMaker
from ..repositories import engine as repo
from .clusters.router import Clusters
from .log_tail import LogTail, LogTails, LogTailsFull
from .ray_client import RayJobNotFound, RayJobs, RayUnavailable

logger = logging.getLogger(__name__)

LIVE_WINDOW_BYTES = 8 * 1024 * 1024
"""How much of a running job's log the gateway keeps (its end); older text is read from the start no more."""
MAX_FOLLOWED_JOBS = 64
"""Running jobs whose logs are tailed at once (each costs one stream from Ray and up to LIVE_WINDOW_BYTES)."""


@dataclass(frozen=True, slots=True)
class LiveBytes:
    """Bytes of a running job's log from `start` (the offset asked for, or the first one still kept)."""

    data: bytes
    start: int
    total: int
    """Bytes of log so far."""


class LiveLogs:
    def __init__(
        self,
        clusters: Clusters,
        sessionmaker: SessionMaker,
        cluster_of: Callable[[uuid.UUID], tuple[bool, uuid.UUID | None]],
        *,
        window_bytes: int = LIVE_WINDOW_BYTES,
        max_tails: int = MAX_FOLLOWED_JOBS,
    ):
        self._clusters = clusters
        self._sessionmaker = sessionmaker
        self._cluster_of = cluster_of
        self.tails = LogTails(window_bytes=window_bytes, max_tails=max_tails)

    async def _client(self, job_id: uuid.UUID) -> RayJobs | None:
        known, cluster_id = self._cluster_of(job_id)
        if not known:
            async with self._sessionmaker() as session:
                cluster_id = await repo.cluster_of(session, job_id)
        return self._clusters.client_now(cluster_id)

    async def ended(self, job_id: uuid.UUID, submission_id: str, max_bytes: int) -> str | None:
        """The log of a job that ended on its launcher's word but whose log is not stored yet, read once from
        Ray (at most its last `max_bytes`); None when its cluster or Ray cannot tell."""
        ray = await self._client(job_id)
        if ray is None:
            return None
        try:
            return await ray.logs(submission_id, max_bytes, wait_end=False)
        except (RayJobNotFound, RayUnavailable):
            return None

    @contextlib.asynccontextmanager
    async def tail(self, job_id: uuid.UUID, submission_id: str) -> AsyncIterator[LogTail | None]:
        """The job's shared tail, caught up with what Ray holds; None when its cluster or Ray cannot tell."""
        ray = await self._client(job_id)
        async with contextlib.AsyncExitStack() as stack:
            tail: LogTail | None = None
            if ray is not None:
                try:
                    tail = await stack.enter_async_context(
                        self.tails.reading(submission_id, address=ray.address, headers=ray.headers)
                    )
                except LogTailsFull as exc:
                    logger.warning("live logs of job %s not followed: %s", job_id, exc)
            if tail is not None:
                await tail.caught_up()
                if tail.error is not None and tail.total == 0:
                    tail = None
            yield tail

    async def read(self, job_id: uuid.UUID, submission_id: str, start: int, limit: int) -> LiveBytes | None:
        """Up to `limit` bytes of the log from `start` (or from the oldest byte kept, when that is later)."""
        async with self.tail(job_id, submission_id) as tail:
            if tail is None:
                return None
            begin, data = tail.bytes_since(start)
            return LiveBytes(data=data[: max(0, limit)], start=begin, total=tail.total)

    async def close(self) -> None:
        await self.tails.close()
