"""Claiming QUEUED jobs fairly and submitting them to Ray exactly once.

A claim commits PENDING, the derived submission id and the job token's hash before Ray is called, so a crash
after the submission is recoverable; `submitted_at` is recorded once Ray accepted. A job whose submission failed
transiently stays PENDING (without `submitted_at`) and is resubmitted with the same submission id: if the first
attempt did reach Ray, Ray refuses the duplicate and the job is simply marked submitted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from ..auth import hash_token, new_bootstrap_code
from ..log_config import log_context
from ..models import JobStatus
from ..repositories import engine as repo
from ..repositories.engine import ClaimedJob
from ..services.job_state import transition
from ..state import GatewayState
from ..storage.base import StorageError
from .clusters import STARTING_MESSAGE, ClusterFailed, ClusterGone, ClusterWait, Tenant
from .clusters.router import Clusters, ClusterStatus
from .joblogs import logs_key
from .ray_client import RayJobNotFound, RayRejected, RayUnavailable
from .submission import Submission, SubmissionRejected, build_submission, submission_id_for
from .workdirs import Workdirs

logger = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 15.0
AGENT_STARTING = "No available agent to submit job"
AGENT_RETRY_SECONDS = 0.25


class Dispatcher:
    """Claims work within the caps and submits it; remembers which PENDING jobs this process is still handling."""

    def __init__(
        self,
        *,
        state: GatewayState,
        clusters: Clusters,
        workdirs: Workdirs,
        batch: int = 32,
        concurrency: int = 8,
        on_submitted: Callable[[], None] = lambda: None,
        wake: Callable[[], None] = lambda: None,
        on_ray_unavailable: Callable[[], None] = lambda: None,
    ):
        self.state = state
        self.clusters = clusters
        self.workdirs = workdirs
        self.batch = batch
        self.on_submitted = on_submitted
        self.wake = wake
        self.on_ray_unavailable = on_ray_unavailable
        self._semaphore = asyncio.Semaphore(concurrency)
        self._in_flight: set[uuid.UUID] = set()
        self._retry_at: dict[uuid.UUID, tuple[float, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()
        self.submitted_count = 0
        self._last_waiting = 0
        self.cluster_wait_seconds = 600.0

    def recently_claimed(self, job_id: uuid.UUID) -> bool:
        return job_id in self._recent

    def owns(self, job_id: uuid.UUID) -> bool:
        """True while this process is submitting the job or waiting to retry it."""
        return job_id in self._in_flight

    def next_retry_in(self) -> float | None:
        if not self._retry_at:
            return None
        return max(0.0, min(due for due, _ in self._retry_at.values()) - time.monotonic())

    def _spawn(self, job_id: uuid.UUID, coroutine: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coroutine
            except Exception:  # the job stays PENDING without submitted_at: the status sync adopts it later
                logger.exception("submitting job %s failed", job_id)
                self._in_flight.discard(job_id)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def dispatch(self) -> int:
        """Claim batches until the caps or the queue are exhausted; submissions run in the background."""
        total = 0
        waiting: set[uuid.UUID] = set()
        while True:
            claimed = await self._claim_batch(waiting)
            for item, token in claimed:
                self._spawn(item.job.id, self._submit(item, token, attempt=0))
            total += len(claimed)
            if len(claimed) + self._last_waiting < self.batch:
                return total

    async def _claim_batch(self, waiting: set[uuid.UUID]) -> list[tuple[ClaimedJob, str]]:
        """Claim the next fair batch; a job whose tenant can get no cluster now stays QUEUED (added to `waiting`)."""
        settings = self.state.settings
        started = time.perf_counter()
        prepared: list[tuple[ClaimedJob, str]] = []
        async with self.state.sessionmaker() as session, session.begin():
            claimed = await repo.claim_queued(
                session,
                max_running=settings.max_running_jobs,
                per_user=settings.max_running_jobs_per_user,
                batch=self.batch,
                exclude=list(waiting),
            )
            self._last_waiting = 0
            for item in claimed:
                try:
                    cluster_id = await self.clusters.place(
                        session, Tenant(item.job.author_id, item.program.provider_id)
                    )
                except ClusterWait as exc:
                    if item.job.message != str(exc):
                        item.job.message = str(exc)
                    waiting.add(item.job.id)
                    self._last_waiting += 1
                    continue
                code = new_bootstrap_code()
                item.job.cluster_id = cluster_id
                item.job.ray_submission_id = submission_id_for(item.job.id)
                item.job.bootstrap_hash = hash_token(code)
                item.job.token_hash = None
                starting = self.clusters.status(cluster_id) == ClusterStatus.STARTING
                transition(item.job, JobStatus.PENDING, message=STARTING_MESSAGE if starting else None)
                if not starting and item.job.message:
                    item.job.message = None
                prepared.append((item, code))
        self._in_flight.update(item.job.id for item, _ in prepared)
        for item, _ in prepared:
            self._recent[item.job.id] = None
        while len(self._recent) > 1000:
            self._recent.popitem(last=False)
        if prepared:
            logger.debug("claimed %d jobs in %.1f ms", len(prepared), (time.perf_counter() - started) * 1000)
        return prepared

    async def _submit(self, item: ClaimedJob, code: str, *, attempt: int) -> None:
        tenant = Tenant(item.job.author_id, item.program.provider_id).key
        with log_context(job_id=item.job.id, tenant=tenant):
            await self._submit_logged(item, code, attempt=attempt)

    async def _submit_logged(self, item: ClaimedJob, code: str, *, attempt: int) -> None:
        job_id = item.job.id
        started = time.perf_counter()
        try:
            ray = await self.clusters.client(item.job.cluster_id, timeout=self.cluster_wait_seconds)
            async with self._semaphore:
                submission = await self._build(item, code)
                built = time.perf_counter()
                await ray.submit(
                    submission_id=submission.submission_id,
                    entrypoint=submission.entrypoint,
                    runtime_env=submission.runtime_env,
                    metadata=submission.metadata,
                    entrypoint_num_cpus=submission.entrypoint_num_cpus,
                    bundle=submission.bundle,
                )
        except ClusterFailed as exc:
            if exc.deterministic:
                await self._fail(job_id, str(exc))
            else:
                self._schedule_retry(job_id, attempt, str(exc))
        except (ClusterGone, TimeoutError) as exc:
            self._schedule_retry(job_id, attempt, str(exc) or "its Ray cluster did not start in time")
        except (SubmissionRejected, RayRejected) as exc:
            await self._fail(job_id, f"The job could not be submitted: {_gist(str(exc))}", details=str(exc))
        except RayUnavailable as exc:
            if AGENT_STARTING in str(exc):  # a head just started: its job agent comes up a moment later
                self._schedule_retry(job_id, attempt, str(exc), delay=AGENT_RETRY_SECONDS)
                return
            self.on_ray_unavailable()  # take no new work until Ray answers again
            self._schedule_retry(job_id, attempt, str(exc))
        except (RayJobNotFound, StorageError, OSError) as exc:
            self._schedule_retry(job_id, attempt, str(exc))
        except Exception:
            logger.exception("submitting job %s failed unexpectedly; will retry", job_id)
            self._schedule_retry(job_id, attempt, "unexpected error")
        else:
            logger.debug(
                "job %s: submission built in %.1f ms, Ray accepted it in %.1f ms",
                job_id,
                (built - started) * 1000,
                (time.perf_counter() - built) * 1000,
            )
            await self._mark_submitted(job_id, attempt)

    async def _build(self, item: ClaimedJob, code: str) -> Submission:
        """`build_submission` within its time limit; a disk error fails the job with its reason (not retried)."""
        settings = self.state.settings
        limit = settings.submission_build_timeout_seconds
        try:
            async with asyncio.timeout(limit) as deadline:
                return await build_submission(item, bootstrap=code, settings=settings, workdirs=self.workdirs)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise SubmissionRejected(
                f"preparing the job's files took longer than {limit:g} s "
                "(GATEWAY_SUBMISSION_BUILD_TIMEOUT_SECONDS)"
            ) from None
        except OSError as exc:
            logger.warning("preparing job %s failed: %s", item.job.id, exc)
            reason = exc.strerror or type(exc).__name__  # not the path: it names the gateway's own directories
            raise SubmissionRejected(f"preparing the job's files failed: {reason}") from None

    async def _mark_submitted(self, job_id: uuid.UUID, attempt: int) -> None:
        try:
            async with self.state.sessionmaker() as session, session.begin():
                await repo.mark_submitted(session, [job_id], datetime.now(UTC))
        except Exception as exc:  # the status sync records it later from Ray's job list
            logger.warning("could not record the submission of job %s: %s", job_id, exc)
        self._in_flight.discard(job_id)
        self._retry_at.pop(job_id, None)
        self.submitted_count += 1
        self.on_submitted()

    def _schedule_retry(self, job_id: uuid.UUID, attempt: int, why: str, *, delay: float | None = None) -> None:
        if delay is None:
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**attempt)
        logger.warning("submission of job %s failed (%s); retrying in %.0f s", job_id, why, delay)
        self._in_flight.add(job_id)
        self._retry_at[job_id] = (time.monotonic() + delay, attempt + 1)
        self.wake()  # the dispatch loop recomputes when to run retries

    def adopt(self, job_id: uuid.UUID) -> None:
        """Take over a PENDING job that never reached Ray (its submitter crashed): resubmit it now."""
        if job_id in self._in_flight:
            return
        self._in_flight.add(job_id)
        self._retry_at[job_id] = (time.monotonic(), 0)
        self.wake()

    def run_due_retries(self) -> None:
        now = time.monotonic()
        for job_id, (due, attempt) in list(self._retry_at.items()):
            if due <= now:
                del self._retry_at[job_id]
                self._spawn(job_id, self._resubmit(job_id, attempt))

    async def _resubmit(self, job_id: uuid.UUID, attempt: int) -> None:
        submission_id = submission_id_for(job_id)
        async with self.state.sessionmaker() as session:
            cluster_id = await repo.cluster_of(session, job_id)
        ray = self.clusters.client_now(cluster_id)
        try:
            if ray is not None and await ray.job_state(submission_id) is not None:
                await self._mark_submitted(job_id, attempt)
                return
        except RayUnavailable as exc:
            self._schedule_retry(job_id, attempt, str(exc))
            return
        code = new_bootstrap_code()
        async with self.state.sessionmaker() as session, session.begin():
            item = await repo.load_for_resubmit(session, job_id)
            if item is None:  # finished, stopped, submitted or locked by another replica meanwhile
                self._in_flight.discard(job_id)
                return
            if item.job.stop_requested:
                transition(item.job, JobStatus.STOPPED, message="Stopped before it started.")
                self._in_flight.discard(job_id)
                return
            if self.clusters.status(item.job.cluster_id) == ClusterStatus.GONE:
                tenant = Tenant(item.job.author_id, item.program.provider_id)
                try:
                    item.job.cluster_id = await self.clusters.place(session, tenant)
                except ClusterWait as exc:
                    item.job.message = str(exc)
                    self._schedule_retry(job_id, attempt, str(exc))
                    return
            item.job.bootstrap_hash = hash_token(code)
            item.job.token_hash = None
        await self._submit(item, code, attempt=attempt)

    async def _fail(self, job_id: uuid.UUID, reason: str, *, details: str = "") -> None:
        """FAILED with the reason in the job's logs (a submission that can never work)."""
        key = logs_key(job_id)
        text = f"[gateway] {reason}\n" + (f"{details.rstrip()}\n" if details and details not in reason else "")
        try:
            await self.state.storage.put_bytes(key, text.encode())
        except StorageError as exc:
            logger.warning("could not store the logs of job %s: %s", job_id, exc)
            key = ""
        async with self.state.sessionmaker() as session, session.begin():
            for job in await repo.lock_jobs(session, [job_id]):
                if not JobStatus(job.status).is_terminal():
                    if key:
                        job.logs_key = key
                    transition(job, JobStatus.FAILED, message=reason[:1000])
        self._in_flight.discard(job_id)
        self._retry_at.pop(job_id, None)
        self.on_submitted()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _gist(text: str) -> str:
    """One line of an error text: the last line of a traceback (`ValueError: ...`), else the first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() not in ("", ".")]
    if not lines:
        return text.strip()
    if "Traceback (most recent call last)" in text:
        return lines[-1].rstrip(".") + "."
    return lines[0]
