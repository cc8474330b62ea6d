"""The job state machine: every status change goes through `transition`, which keeps terminal final."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect

from .. import metrics
from ..models import Job, JobStatus

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    ),
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.STOPPED: frozenset(),
}


class InvalidTransition(Exception):
    """A status change the state machine forbids (for example, out of a terminal state)."""


def transition(job: Job, new: JobStatus, *, message: str | None = None, now: datetime | None = None) -> bool:
    """Move `job` to `new`, stamping started/finished times; False when it is already there.

    Raises InvalidTransition for a forbidden move, such as leaving SUCCEEDED, FAILED or STOPPED.
    """
    current = JobStatus(job.status)
    if new == current:
        return False
    if new not in _ALLOWED[current]:
        raise InvalidTransition(f"job {job.id}: {current} -> {new} is not allowed")
    stamp = now or datetime.now(UTC)
    loaded = inspect(job).dict  # only what is loaded: reading an expired column would need IO here
    metrics.record_transition(
        old=current.value,
        new=new.value,
        at=stamp,
        created_at=loaded.get("created_at"),
        submitted_at=loaded.get("submitted_at"),
        started_at=loaded.get("started_at"),
    )
    job.status = new.value
    if new == JobStatus.RUNNING and job.started_at is None:
        job.started_at = stamp
    if new.is_terminal():
        job.finished_at = stamp
        if job.started_at is None and new != JobStatus.STOPPED:
            job.started_at = stamp
        job.token_hash = None
    if message is not None:
        job.message = message
    return True
