"""Keeping PENDING/RUNNING jobs in step with Ray: one `list_jobs` per pass, stops, logs and results at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from ..errors import BadRequest, PayloadTooLarge
from ..log_config import log_context
from ..models import JobStatus
from ..repositories import engine as repo
from ..repositories.engine import ActiveJob
from ..services import results
from ..services.job_state import transition
from ..services.logs import split_logs
from ..state import GatewayState
from ..storage.base import StorageError
from .clusters.router import Clusters, ClusterStatus
from .dispatcher import Dispatcher
from .joblogs import failure_summary, logs_key, prepare_logs
from .ray_client import RayJobNotFound, RayJobs, RayJobState, RayUnavailable
from .reported_end import ReportedEnds
from .submission import SUBMISSION_PREFIX, job_id_from_submission

logger = logging.getLogger(__name__)

# A PENDING job that never reached Ray is resubmitted once its claim is this old (its submitter is gone).
RESUBMIT_GRACE = timedelta(seconds=30)
# Ray lists a job as soon as it accepted it; this margin covers the clocks of several gateway replicas.
LOST_MARGIN = timedelta(seconds=5)
STOP_RESEND_SECONDS = 10.0
_FINAL = {"SUCCEEDED": JobStatus.SUCCEEDED, "FAILED": JobStatus.FAILED, "STOPPED": JobStatus.STOPPED}
LOST_REASON = "Ray no longer knows this job: its Ray cluster was restarted or replaced."
# A job that reported its end but still runs on Ray this long after is stopped there.
REPORTED_END_GRACE = timedelta(seconds=30)
GONE_REASON = "The job's Ray cluster is gone (it was stopped or its head died)."


class StatusSync:
    """One pass maps Ray's view of every active job onto ours through the job state machine."""

    def __init__(
        self, *, state: GatewayState, clusters: Clusters, dispatcher: Dispatcher, finalize_concurrency: int = 8
    ):
        self.state = state
        self.clusters = clusters
        self.dispatcher = dispatcher
        self._finalize_slots = asyncio.Semaphore(finalize_concurrency)
        self._stop_sent: dict[uuid.UUID, float] = {}
        self._last_orphan_check = float("-inf")
        self.resubmit_grace = RESUBMIT_GRACE
        self.active_count = 0
        # Which cluster each active job runs on (for live logs), as of the last pass.
        self.cluster_of: dict[uuid.UUID, uuid.UUID | None] = {}
        self.reported = ReportedEnds(state=state, clusters=clusters, finish=self._finish)

    async def sync_once(self) -> int:
        """Sync every PENDING/RUNNING job, one `list_jobs` per cluster; returns how many ended.

        Raises RayUnavailable when no cluster with active jobs could answer.
        """
        async with self.state.sessionmaker() as session:
            active = await repo.load_active(session)
        self.active_count = len(active)
        self.cluster_of = {row.id: row.cluster_id for row in active}
        by_cluster: dict[uuid.UUID | None, list[ActiveJob]] = {}
        for row in active:
            by_cluster.setdefault(row.cluster_id, []).append(row)
        self.clusters.observe_active({cid: len(rows) for cid, rows in by_cluster.items()})
        await self.clusters.record_usage()
        orphan_check = time.monotonic() - self._last_orphan_check >= self.state.settings.sweep_interval_seconds
        if not active and not orphan_check:
            return 0
        await self.clusters.resolve(set(by_cluster))
        clients = self.clusters.ready_clients() if orphan_check else {}
        for cid in by_cluster:
            client = self.clusters.client_now(cid)
            if client is not None:
                clients[cid] = client
        snapshot = datetime.now(UTC)
        cids = list(clients)
        listed = await asyncio.gather(*(clients[cid].list_jobs() for cid in cids), return_exceptions=True)
        ray_jobs: dict[uuid.UUID | None, dict[str, RayJobState]] = {}
        failures: list[BaseException] = []
        for cid, answer in zip(cids, listed, strict=True):
            if isinstance(answer, RayUnavailable):
                failures.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                ray_jobs[cid] = answer
        if failures and not ray_jobs:
            raise failures[0]  # no cluster answered: Ray is down (the engine stops taking work)
        ended = 0
        for cid, rows in by_cluster.items():
            if cid in ray_jobs:
                ended += await self._sync_cluster(cid, rows, ray_jobs[cid], snapshot)
            elif self.clusters.status(cid) == ClusterStatus.GONE:
                ended += await self._cluster_gone(rows)
        if orphan_check:
            self._last_orphan_check = time.monotonic()
            active_ids = {row.id for row in active}
            for cid, jobs in ray_jobs.items():
                await self._stop_orphans(clients[cid], jobs, active_ids)
        return ended

    async def _cluster_gone(self, rows: list[ActiveJob]) -> int:
        ended = 0
        for row in rows:
            if row.status.is_terminal():
                await self.reported.confirm(row, None)  # reported ended, and its cluster is gone: nothing to wait for
                continue
            if self.dispatcher.owns(row.id):
                continue
            if row.submitted_at is None:
                self.dispatcher.adopt(row.id)  # never reached its cluster: placed again on resubmission
                continue
            await self._finish(row, None, note=GONE_REASON)
            ended += 1
        return ended

    async def _sync_cluster(
        self, cid: uuid.UUID | None, active: list[ActiveJob], ray_jobs: dict[str, RayJobState], snapshot: datetime
    ) -> int:
        to_running: list[uuid.UUID] = []
        seen_submitted: list[uuid.UUID] = []
        finished: list[tuple[ActiveJob, RayJobState]] = []
        lost: list[ActiveJob] = []
        confirm: list[tuple[ActiveJob, RayJobState | None]] = []
        for row in active:
            ray_state = ray_jobs.get(row.submission_id or "")
            if row.status.is_terminal():  # its launcher reported the end: free its slot once Ray agrees
                if row.id in self.reported.storing:
                    continue  # its early logs are being stored: confirmed on the next pass
                if ray_state is None or ray_state.is_terminal:
                    confirm.append((row, ray_state))
                elif row.updated_at < snapshot - REPORTED_END_GRACE:
                    await self._stop_liar(row)
                continue
            if ray_state is None:
                self._unknown(row, snapshot, lost)
                continue
            if row.submitted_at is None:
                seen_submitted.append(row.id)
            if ray_state.is_terminal:
                finished.append((row, ray_state))
                continue
            if ray_state.status == "RUNNING" and row.status == JobStatus.PENDING:
                to_running.append(row.id)
            if row.stop_requested:
                await self._send_stop(row)
        await self._apply_running(to_running, seen_submitted)
        for row, ray_state in confirm:
            await self.reported.confirm(row, ray_state)
        for row in lost:
            await self._finish(row, None, note=LOST_REASON)
        if finished:
            await asyncio.gather(*(self._finalize(row, ray_state) for row, ray_state in finished))
        return len(finished) + len(lost) + len(confirm)

    async def job_ended(self, job_id: uuid.UUID, exit_code: int, *, result_in_log: bool = False) -> None:
        """The launcher says the entrypoint exited: finish the job now (see reported_end.py)."""
        await self.reported.job_ended(job_id, exit_code, result_in_log=result_in_log)

    async def _stop_liar(self, row: ActiveJob) -> None:
        """A job that reported its end long ago still runs on Ray: stop it (it keeps its slot until it stops)."""
        ray = self.clusters.client_now(row.cluster_id)
        now = time.monotonic()
        if (
            ray is None
            or not row.submission_id
            or now - self._stop_sent.get(row.id, float("-inf")) < STOP_RESEND_SECONDS
        ):
            return
        logger.warning("job %s reported its end but still runs on Ray; stopping it", row.id)
        self._stop_sent[row.id] = now
        with contextlib.suppress(RayJobNotFound, RayUnavailable):
            await ray.stop(row.submission_id)

    def _unknown(self, row: ActiveJob, snapshot: datetime, lost: list[ActiveJob]) -> None:
        if self.dispatcher.owns(row.id):
            return
        if row.submitted_at is None:
            if row.updated_at < snapshot - self.resubmit_grace:
                logger.info("job %s was claimed but never reached Ray; resubmitting it", row.id)
                self.dispatcher.adopt(row.id)
        elif row.submitted_at < snapshot - LOST_MARGIN:
            lost.append(row)

    async def _apply_running(self, to_running: list[uuid.UUID], seen_submitted: list[uuid.UUID]) -> None:
        if not to_running and not seen_submitted:
            return
        async with self.state.sessionmaker() as session, session.begin():
            await repo.mark_submitted(session, seen_submitted, datetime.now(UTC))
            for job in await repo.lock_jobs(session, to_running):
                if JobStatus(job.status) == JobStatus.PENDING:
                    transition(job, JobStatus.RUNNING)
                    repo.clear_waiting_message(job)

    async def _finalize(self, row: ActiveJob, ray_state: RayJobState) -> None:
        async with self._finalize_slots, _job_logging(row):
            try:
                await self._finish(row, ray_state)
            except (RayUnavailable, StorageError) as exc:
                logger.warning("could not finish job %s yet (%s); retrying on the next pass", row.id, exc)
            except Exception:
                logger.exception("could not finish job %s; retrying on the next pass", row.id)

    async def _finish(
        self, row: ActiveJob, ray_state: RayJobState | None, *, note: str | None = None, early: bool = False
    ) -> None:
        """Store the logs once, then move the job to its final status (and pick up a result from the logs)."""
        raw = ""
        ray = self.clusters.client_now(row.cluster_id)
        if ray_state is not None and row.submission_id and ray is not None:
            try:  # streamed: at most the capped tail is ever held, however much the job printed
                raw = await ray.logs(row.submission_id, self.state.settings.log_max_bytes, wait_end=not early)
            except RayJobNotFound:
                raw = ""
        # What the job's user may read: for a provider's function, without its `[PRIVATE]` lines.
        visible, ray_message = raw, ray_state.message if ray_state is not None else None
        if ray_state is not None and await self._is_provider_job(row.id):
            visible = await _user_view(raw)
            ray_message = await _user_view(ray_message or "")
        if ray_state is None:
            new_status = JobStatus.STOPPED if row.stop_requested else JobStatus.FAILED
            message = "Stopped on request." if row.stop_requested else note
        else:
            new_status = _FINAL[ray_state.status]
            if new_status == JobStatus.FAILED and row.stop_requested:
                # Ray cannot interrupt a runtime environment being built; what ends after a stop is STOPPED.
                new_status = JobStatus.STOPPED
            message = _message(new_status, ray_message, visible)
        footer = ""
        if ray_state is not None and ray_state.status == "FAILED" and ray_message and ray_message.strip():
            reason = ray_message.strip()
            if "last available logs" in reason:  # Ray repeats the log tail, which is already above
                reason = failure_summary(reason, visible) or reason
            footer += f"\n[gateway] Ray reports the job failed: {reason}\n"
        if note:
            footer += f"[gateway] {note}\n"
        text, fallback_result = await prepare_logs(raw, self.state.settings.log_max_bytes, footer=footer)
        checked, problem = await self._check_result(fallback_result) if fallback_result is not None else (None, None)
        key = logs_key(row.id)
        await self.state.storage.put_bytes(key, text.encode("utf-8"))
        async with self.state.sessionmaker() as session, session.begin():
            jobs = await repo.lock_jobs(session, [row.id])
            if not jobs or JobStatus(jobs[0].status).is_terminal():
                return
            job = jobs[0]
            if fallback_result is not None and not await repo.has_result(session, job.id):
                if checked is not None:
                    await results.store_result(self.state.storage, job, checked)  # nothing to replace
                elif new_status == JobStatus.SUCCEEDED:
                    new_status, message = JobStatus.FAILED, problem
            job.logs_key = key
            if early:
                job.ray_confirmed = False
            if new_status == JobStatus.STOPPED and job.stop_reason:
                message = job.stop_reason  # the gateway's own stop (the run-time limit) says why
            repo.clear_waiting_message(job)
            transition(job, new_status, message=message)
        self._stop_sent.pop(row.id, None)
        if ray_state is not None and row.submission_id and ray is not None and not early:
            try:
                await ray.delete(row.submission_id)
            except RayUnavailable as exc:
                logger.info("could not delete Ray job %s: %s", row.submission_id, exc)

    async def _is_provider_job(self, job_id: uuid.UUID) -> bool:
        async with self.state.sessionmaker() as session:
            return await repo.is_provider_job(session, job_id)

    async def _check_result(self, text: str) -> tuple[str | None, str | None]:
        """(the text to store, None), or (None, why the job's result cannot be kept); checked off the loop."""
        limit = self.state.settings.max_result_bytes
        try:
            return await results.result_text(text, max_bytes=limit), None
        except PayloadTooLarge:
            return None, f"The job's result is larger than {limit} bytes."
        except BadRequest as exc:
            return None, f"The job's result is not valid JSON: {exc.message.removeprefix('Invalid request: result: ')}"

    async def _stop_orphans(self, ray: RayJobs, ray_jobs: dict[str, RayJobState], active_ids: set[uuid.UUID]) -> None:
        """Ray jobs still running whose gateway job already ended (a stop that raced a submission)."""
        candidates: dict[uuid.UUID, str] = {}
        for submission_id, ray_state in ray_jobs.items():
            if ray_state.is_terminal or not submission_id.startswith(SUBMISSION_PREFIX):
                continue
            job_id = job_id_from_submission(submission_id)
            if job_id is not None and job_id not in active_ids and not self.dispatcher.owns(job_id):
                candidates[job_id] = submission_id
        if not candidates:
            return
        async with self.state.sessionmaker() as session:
            known = await repo.statuses(session, candidates)
        for job_id, status in known.items():
            if status.is_terminal():
                logger.warning("job %s is %s but still runs on Ray; stopping it", job_id, status)
                try:
                    await ray.stop(candidates[job_id])
                except (RayJobNotFound, RayUnavailable) as exc:
                    logger.info("could not stop orphan %s: %s", candidates[job_id], exc)

    async def handle_stops(self) -> bool:
        """Send Ray a stop for every job whose stop was asked; True when one was sent or a job stopped here."""
        async with self.state.sessionmaker() as session:
            rows = await repo.stop_requested_jobs(session)
        acted = False
        now = time.monotonic()
        for row in rows:
            if self.dispatcher.owns(row.id):
                continue  # its submission is in flight; the next pass sees it submitted
            if row.status == JobStatus.QUEUED or row.submission_id is None:
                await self._stop_locally(row.id)
                acted = True
                continue
            acted = await self._send_stop(row, now) or acted
        return acted

    async def _send_stop(self, row: ActiveJob, now: float | None = None) -> bool:
        """Ask Ray to stop the job (again after a while if it still runs); True when something was done."""
        now = time.monotonic() if now is None else now
        if row.submission_id is None or now - self._stop_sent.get(row.id, float("-inf")) < STOP_RESEND_SECONDS:
            return False
        ray = self.clusters.client_now(row.cluster_id)
        if ray is None:
            if self.clusters.status(row.cluster_id) == ClusterStatus.GONE:
                await self._finish(row, None, note="Stopped on request; its Ray cluster was gone.")
                return True
            return False  # its cluster is still starting: stopped once it is up
        try:
            await ray.stop(row.submission_id)
            self._stop_sent[row.id] = now
        except RayJobNotFound:
            if row.submitted_at is None:
                await self._stop_locally(row.id)
            else:
                await self._finish(row, None, note="Stopped on request; Ray no longer knew the job.")
        return True

    async def _stop_locally(self, job_id: uuid.UUID) -> None:
        async with self.state.sessionmaker() as session, session.begin():
            for job in await repo.lock_jobs(session, [job_id]):
                if not JobStatus(job.status).is_terminal():
                    transition(job, JobStatus.STOPPED, message=job.stop_reason or "Stopped before it started.")


@contextlib.asynccontextmanager
async def _job_logging(row: ActiveJob) -> AsyncIterator[None]:
    with log_context(job_id=row.id, cluster=row.cluster_id or "shared"):
        yield


def _message(status: JobStatus, ray_message: str | None, logs: str) -> str | None:
    """The job's message from what its user may read (for a provider's function: the filtered texts)."""
    if status == JobStatus.STOPPED:
        return "Stopped on request."
    if status == JobStatus.FAILED:
        return failure_summary(ray_message, logs) or "The job failed."
    return None


async def _user_view(text: str) -> str:
    """`split_logs` for the function's user, off the loop when the text is large."""
    if len(text) <= 256 * 1024:
        return split_logs(text, for_provider=False)
    return await asyncio.to_thread(split_logs, text, for_provider=False)
