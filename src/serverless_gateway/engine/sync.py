"""Keeping PENDING/RUNNING jobs in step with Ray: one `list_jobs` per pass, stops, logs and results at the end."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

from ..models import JobStatus
from ..repositories import engine as repo
from ..repositories.engine import ActiveJob
from ..services import results
from ..services.job_state import transition
from ..state import GatewayState
from ..storage.base import StorageError
from .dispatcher import Dispatcher
from .joblogs import failure_summary, logs_key, prepare_logs
from .ray_client import RayJobNotFound, RayJobs, RayJobState, RayUnavailable
from .submission import SUBMISSION_PREFIX, job_id_from_submission

logger = logging.getLogger(__name__)

# A PENDING job that never reached Ray is resubmitted once its claim is this old (its submitter is gone).
RESUBMIT_GRACE = timedelta(seconds=30)
# Ray lists a job as soon as it accepted it; this margin covers the clocks of several gateway replicas.
LOST_MARGIN = timedelta(seconds=5)
STOP_RESEND_SECONDS = 10.0
_FINAL = {"SUCCEEDED": JobStatus.SUCCEEDED, "FAILED": JobStatus.FAILED, "STOPPED": JobStatus.STOPPED}
LOST_REASON = "Ray no longer knows this job: its Ray cluster was restarted or replaced."


class StatusSync:
    """One pass maps Ray's view of every active job onto ours through the job state machine."""

    def __init__(self, *, state: GatewayState, ray: RayJobs, dispatcher: Dispatcher, finalize_concurrency: int = 8):
        self.state = state
        self.ray = ray
        self.dispatcher = dispatcher
        self._finalize_slots = asyncio.Semaphore(finalize_concurrency)
        self._stop_sent: dict[uuid.UUID, float] = {}
        self._last_orphan_check = float("-inf")
        self.resubmit_grace = RESUBMIT_GRACE
        self.active_count = 0

    async def sync_once(self) -> int:
        """Sync every PENDING/RUNNING job; returns how many ended. Raises RayUnavailable when Ray cannot answer."""
        async with self.state.sessionmaker() as session:
            active = await repo.load_active(session)
        self.active_count = len(active)
        orphan_check = time.monotonic() - self._last_orphan_check >= self.state.settings.sweep_interval_seconds
        if not active and not orphan_check:
            return 0
        snapshot = datetime.now(UTC)
        ray_jobs = await self.ray.list_jobs()
        to_running: list[uuid.UUID] = []
        seen_submitted: list[uuid.UUID] = []
        finished: list[tuple[ActiveJob, RayJobState]] = []
        lost: list[ActiveJob] = []
        for row in active:
            ray_state = ray_jobs.get(row.submission_id or "")
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
        for row in lost:
            await self._finish(row, None, note=LOST_REASON)
        if finished:
            await asyncio.gather(*(self._finalize(row, ray_state) for row, ray_state in finished))
        if orphan_check:
            self._last_orphan_check = time.monotonic()
            await self._stop_orphans(ray_jobs, {row.id for row in active})
        return len(finished) + len(lost)

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

    async def _finalize(self, row: ActiveJob, ray_state: RayJobState) -> None:
        async with self._finalize_slots:
            try:
                await self._finish(row, ray_state)
            except (RayUnavailable, StorageError) as exc:
                logger.warning("could not finish job %s yet (%s); retrying on the next pass", row.id, exc)
            except Exception:
                logger.exception("could not finish job %s; retrying on the next pass", row.id)

    async def _finish(self, row: ActiveJob, ray_state: RayJobState | None, *, note: str | None = None) -> None:
        """Store the logs once, then move the job to its final status (and pick up a result from the logs)."""
        raw = ""
        if ray_state is not None and row.submission_id:
            try:
                raw = await self.ray.logs(row.submission_id)
            except RayJobNotFound:
                raw = ""
        if ray_state is None:
            new_status = JobStatus.STOPPED if row.stop_requested else JobStatus.FAILED
            message = "Stopped on request." if row.stop_requested else note
        else:
            new_status = _FINAL[ray_state.status]
            if new_status == JobStatus.FAILED and row.stop_requested:
                # Ray cannot interrupt a runtime environment being built; what ends after a stop is STOPPED.
                new_status = JobStatus.STOPPED
            message = _message(new_status, ray_state, raw)
        footer = ""
        if ray_state is not None and ray_state.status == "FAILED" and ray_state.message:
            reason = ray_state.message.strip()
            if "last available logs" in reason:  # Ray repeats the log tail, which is already above
                reason = failure_summary(reason, raw) or reason
            footer += f"\n[gateway] Ray reports the job failed: {reason}\n"
        if note:
            footer += f"[gateway] {note}\n"
        text, fallback_result = await prepare_logs(raw, self.state.settings.log_max_bytes, footer=footer)
        key = logs_key(row.id)
        await self.state.storage.put_bytes(key, text.encode("utf-8"))
        async with self.state.sessionmaker() as session, session.begin():
            jobs = await repo.lock_jobs(session, [row.id])
            if not jobs or JobStatus(jobs[0].status).is_terminal():
                return
            job = jobs[0]
            if fallback_result is not None and not await repo.has_result(session, job.id):
                problem = self._check_result(fallback_result)
                if problem is None:
                    await results.store_result(self.state.storage, job, fallback_result)
                elif new_status == JobStatus.SUCCEEDED:
                    new_status, message = JobStatus.FAILED, problem
            job.logs_key = key
            transition(job, new_status, message=message)
        self._stop_sent.pop(row.id, None)
        if ray_state is not None and row.submission_id:
            try:
                await self.ray.delete(row.submission_id)
            except RayUnavailable as exc:
                logger.info("could not delete Ray job %s: %s", row.submission_id, exc)

    def _check_result(self, text: str) -> str | None:
        if len(text.encode("utf-8")) > self.state.settings.max_result_bytes:
            return f"The job's result is larger than {self.state.settings.max_result_bytes} bytes."
        try:
            json.loads(text)
        except ValueError:
            return "The job's result is not valid JSON."
        return None

    async def _stop_orphans(self, ray_jobs: dict[str, RayJobState], active_ids: set[uuid.UUID]) -> None:
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
                    await self.ray.stop(candidates[job_id])
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
        try:
            await self.ray.stop(row.submission_id)
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
                    transition(job, JobStatus.STOPPED, message="Stopped before it started.")


def _message(status: JobStatus, ray_state: RayJobState, logs: str) -> str | None:
    if status == JobStatus.STOPPED:
        return "Stopped on request."
    if status == JobStatus.FAILED:
        return failure_summary(ray_state.message, logs) or "The job failed."
    return None
