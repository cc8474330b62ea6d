"""Jobs whose launcher reported the entrypoint's exit: finished at once, confirmed when Ray's status agrees.

A reported success is made final in one transaction, before anything is read from Ray, so a client polling the
job sees it end as soon as the launcher said so; the job keeps its running slot (`ray_confirmed` false) until
Ray's own status agrees. Its logs are stored right after (read from Ray meanwhile) and stored again, complete,
when Ray confirms. A failure, a stop under way, or a result the launcher could only print into the log takes
the slow path: Ray's verdict, or the log, decides.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..log_config import log_context
from ..models import JobStatus
from ..repositories import engine as repo
from ..repositories.engine import ActiveJob
from ..services.job_state import transition
from ..state import GatewayState
from ..storage.base import StorageError
from .clusters.router import Clusters
from .joblogs import logs_key, prepare_logs
from .ray_client import RayJobNotFound, RayJobs, RayJobState, RayUnavailable

logger = logging.getLogger(__name__)

Finish = Callable[..., Awaitable[None]]
"""StatusSync._finish(row, ray_state, early=True): the slow path, which reads the log before the job ends."""


@dataclass(frozen=True, slots=True)
class _Ended:
    submission_id: str | None
    cluster_id: uuid.UUID | None


class ReportedEnds:
    def __init__(self, *, state: GatewayState, clusters: Clusters, finish: Finish):
        self.state = state
        self.clusters = clusters
        self._finish = finish
        self.storing: set[uuid.UUID] = set()
        """Jobs whose early logs are being stored: Ray's confirmation waits for the next pass (it would store
        the same key)."""

    async def job_ended(self, job_id: uuid.UUID, exit_code: int, *, result_in_log: bool = False) -> None:
        """The launcher says the entrypoint exited (after sending its result, or printing it when it could not)."""
        if exit_code != 0:
            return  # Ray's verdict (with the traceback, which may not have reached Ray's log yet) decides
        if result_in_log:
            async with self.state.sessionmaker() as session:
                row = await repo.load_one_active(session, job_id)
            if row is not None and not row.stop_requested:
                with log_context(job_id=row.id, cluster=row.cluster_id or "shared"):
                    reported = RayJobState(submission_id=row.submission_id or "", status="SUCCEEDED")
                    await self._finish(row, reported, early=True)
            return
        self.storing.add(job_id)
        try:
            ended = await self._succeed(job_id)
            if ended is not None:
                with log_context(job_id=job_id, cluster=ended.cluster_id or "shared"):
                    await self._store_logs(job_id, ended)
        finally:
            self.storing.discard(job_id)

    async def _succeed(self, job_id: uuid.UUID) -> _Ended | None:
        """SUCCEEDED now, keeping its slot; None when it ended already or a stop is under way."""
        async with self.state.sessionmaker() as session, session.begin():
            jobs = await repo.lock_jobs(session, [job_id])
            if not jobs:
                return None
            job = jobs[0]
            if JobStatus(job.status) not in (JobStatus.PENDING, JobStatus.RUNNING) or job.stop_requested:
                return None
            job.ray_confirmed = False
            repo.clear_waiting_message(job)
            transition(job, JobStatus.SUCCEEDED)
            return _Ended(submission_id=job.ray_submission_id, cluster_id=job.cluster_id)

    async def _store_logs(self, job_id: uuid.UUID, ended: _Ended) -> None:
        """The log as Ray holds it now; what the entrypoint printed is there (the launcher flushed before it
        reported). Until this is stored, readers get the log from Ray."""
        ray = self.clusters.client_now(ended.cluster_id)
        if ray is None or not ended.submission_id:
            return
        try:
            key = await self._save_log(ray, ended.submission_id, job_id, wait_end=False)
        except (RayJobNotFound, RayUnavailable, StorageError) as exc:
            logger.info("the logs of job %s are stored when Ray confirms its end (%s)", job_id, exc)
            return
        async with self.state.sessionmaker() as session, session.begin():
            await repo.set_logs_key(session, job_id, key)

    async def _save_log(self, ray: RayJobs, submission_id: str, job_id: uuid.UUID, *, wait_end: bool) -> str:
        """Read the job's log from Ray (capped) and store it under a new key, which is returned."""
        max_bytes = self.state.settings.log_max_bytes
        raw = await ray.logs(submission_id, max_bytes, wait_end=wait_end)
        text, _ = await prepare_logs(raw, max_bytes)
        key = logs_key(job_id)
        await self.state.storage.put_bytes(key, text.encode("utf-8"))
        return key

    async def confirm(self, row: ActiveJob, ray_state: RayJobState | None) -> None:
        """Ray agrees a reported end: store the complete logs, free the slot, forget the job on Ray."""
        ray = self.clusters.client_now(row.cluster_id)
        complete: str | None = None
        if ray_state is not None and ray is not None and row.submission_id:
            try:
                complete = await self._save_log(ray, row.submission_id, row.id, wait_end=True)
            except (RayJobNotFound, RayUnavailable, StorageError) as exc:
                logger.info("kept the logs stored at the reported end of job %s (%s)", row.id, exc)
        async with self.state.sessionmaker() as session, session.begin():
            await repo.confirm_on_ray(session, row.id, complete)
        if ray_state is not None and ray is not None and row.submission_id:
            try:
                await ray.delete(row.submission_id)
            except RayUnavailable as exc:
                logger.info("could not delete Ray job %s: %s", row.submission_id, exc)
