"""SQL of the execution engine: fair claiming of QUEUED jobs, the active set for status sync, row locks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from ..models import Job, JobStatus, Program, Provider, User

STARTING_MESSAGE = "starting a Ray cluster for this job"
PREPARING_MESSAGE = "Ray is preparing this job's runtime environment (its files, and its dependencies if any)"
"""A PENDING job's message while Ray builds its environment (pip installs can take minutes); gone once it runs."""


def clear_waiting_message(job: Job) -> None:
    """A job that runs or ended no longer waits: drop the message that said why it did."""
    if job.message in (STARTING_MESSAGE, PREPARING_MESSAGE):
        job.message = None

# Claims from every gateway replica are serialized by this transaction-level advisory lock, so the global and
# per-user caps hold across replicas (claiming is a few milliseconds; SKIP LOCKED still skips rows that an API
# request holds, for instance a stop in progress).
CLAIM_LOCK_KEY = 0x6A6F6273  # "jobs"

_RUNNING = (JobStatus.PENDING.value, JobStatus.RUNNING.value)
# A job holds a running slot while it is on Ray: PENDING or RUNNING, or reported ended but not yet by Ray.
_HOLDS_SLOT = or_(Job.status.in_(_RUNNING), Job.ray_confirmed.is_(False))


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A PENDING or RUNNING job as the status sync needs it."""

    id: uuid.UUID
    status: JobStatus
    submission_id: str | None
    stop_requested: bool
    submitted_at: datetime | None
    updated_at: datetime
    cluster_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class TimedJob:
    """A PENDING or RUNNING job on Ray, with when its run time started and the limit its run config asked for."""

    id: uuid.UUID
    since: datetime
    asked_max_seconds: object


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job just moved to PENDING, with what its submission needs."""

    job: Job
    program: Program
    username: str
    provider_name: str | None = None


async def count_running(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Job).where(_HOLDS_SLOT)) or 0)


def _fair_ids(
    *, slots: int | ColumnElement[int], per_user: int, exclude: Sequence[uuid.UUID] = ()
) -> Select[uuid.UUID]:
    """QUEUED job ids to start next: oldest first per user, round-robin across users, within the per-user cap."""
    active = (
        select(Job.author_id.label("author_id"), func.count().label("n"))
        .where(_HOLDS_SLOT)
        .group_by(Job.author_id)
        .cte("active")
    )
    ranked = (
        select(
            Job.id.label("id"),
            Job.author_id.label("author_id"),
            Job.created_at.label("created_at"),
            func.row_number().over(partition_by=Job.author_id, order_by=(Job.created_at, Job.id)).label("rn"),
        )
        .where(Job.status == JobStatus.QUEUED.value, Job.stop_requested.is_(False))
        .where(Job.id.not_in(list(exclude)) if exclude else true())
        .cte("ranked")
    )
    return (
        select(ranked.c.id)
        .select_from(ranked.outerjoin(active, active.c.author_id == ranked.c.author_id))
        .where(ranked.c.rn + func.coalesce(active.c.n, 0) <= per_user)
        .order_by(ranked.c.rn, ranked.c.created_at, ranked.c.id)
        .limit(slots)
    )


async def pick_fair_candidates(session: AsyncSession, *, slots: int, per_user: int) -> list[uuid.UUID]:
    return list((await session.scalars(_fair_ids(slots=slots, per_user=per_user))).all())


async def claim_queued(
    session: AsyncSession, *, max_running: int, per_user: int, batch: int, exclude: Sequence[uuid.UUID] = ()
) -> list[ClaimedJob]:
    """Lock the next fair batch of QUEUED jobs (committed rows only) for this transaction; caps respected.

    Two statements: the advisory lock (so the next statement's snapshot sees the previous claimer's commit),
    then one query that computes the free slots and fair candidates and locks them with their programs.
    """
    await session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
    running = select(func.count()).select_from(Job).where(_HOLDS_SLOT).scalar_subquery()
    slots = func.least(batch, func.greatest(0, max_running - running))
    rows = await session.execute(
        select(Job, Program, User.username, Provider.name)
        .join(Program, Program.id == Job.program_id)
        .join(User, User.id == Job.author_id)
        .outerjoin(Provider, Provider.id == Program.provider_id)
        .where(Job.id.in_(_fair_ids(slots=slots, per_user=per_user, exclude=exclude).scalar_subquery()))
        .where(Job.status == JobStatus.QUEUED.value)
        .order_by(Job.created_at, Job.id)
        .options(defer(Job.result))
        .with_for_update(of=Job, skip_locked=True)
    )
    return [
        ClaimedJob(job=job, program=program, username=username, provider_name=provider)
        for job, program, username, provider in rows.all()
    ]


async def load_for_resubmit(session: AsyncSession, job_id: uuid.UUID) -> ClaimedJob | None:
    """A PENDING job that never reached Ray, locked, with its program (None if it moved on meanwhile)."""
    row = (
        await session.execute(
            select(Job, Program, User.username, Provider.name)
            .join(Program, Program.id == Job.program_id)
            .join(User, User.id == Job.author_id)
            .outerjoin(Provider, Provider.id == Program.provider_id)
            .where(Job.id == job_id, Job.status == JobStatus.PENDING.value, Job.submitted_at.is_(None))
            .options(defer(Job.result))
            .with_for_update(of=Job, skip_locked=True)
        )
    ).first()
    if row is None:
        return None
    return ClaimedJob(job=row[0], program=row[1], username=row[2], provider_name=row[3])


_ACTIVE_COLUMNS = (
    Job.id,
    Job.status,
    Job.ray_submission_id,
    Job.stop_requested,
    Job.submitted_at,
    Job.updated_at,
    Job.cluster_id,
)


def _active(row: Any) -> ActiveJob:
    return ActiveJob(
        id=row[0],
        status=JobStatus(row[1]),
        submission_id=row[2],
        stop_requested=bool(row[3]),
        submitted_at=row[4],
        updated_at=row[5],
        cluster_id=row[6],
    )


async def load_active(session: AsyncSession) -> list[ActiveJob]:
    """Every job on Ray (PENDING, RUNNING, or reported ended and not yet confirmed by Ray), in one query."""
    rows = await session.execute(select(*_ACTIVE_COLUMNS).where(_HOLDS_SLOT))
    return [_active(row) for row in rows.all()]


async def is_provider_job(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Whether the job runs a provider's function (whose `[PRIVATE]` lines its user must not see)."""
    query = select(Program.provider_id.is_not(None)).join(Job, Job.program_id == Program.id).where(Job.id == job_id)
    return bool(await session.scalar(query))


async def lock_jobs(session: AsyncSession, job_ids: Iterable[uuid.UUID]) -> list[Job]:
    """Lock jobs for an update in this transaction (arguments and result are not loaded)."""
    ids = list(job_ids)
    if not ids:
        return []
    result = await session.scalars(
        select(Job).where(Job.id.in_(ids)).options(defer(Job.arguments), defer(Job.result)).with_for_update()
    )
    return list(result.all())


async def has_result(session: AsyncSession, job_id: uuid.UUID) -> bool:
    has = or_(Job.result.is_not(None), Job.result_key.is_not(None))
    return bool(await session.scalar(select(has).where(Job.id == job_id)))


async def mark_submitted(session: AsyncSession, job_ids: Sequence[uuid.UUID], at: datetime) -> None:
    """Record that Ray accepted these submissions."""
    if job_ids:
        await session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.submitted_at.is_(None))
            .values(
                submitted_at=at,
                message=case(
                    (Job.status != JobStatus.PENDING.value, Job.message),
                    (or_(Job.message.is_(None), Job.message == STARTING_MESSAGE), PREPARING_MESSAGE),
                    else_=Job.message,
                ),
            )
            .execution_options(synchronize_session=False)
        )


async def statuses(session: AsyncSession, job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, JobStatus]:
    ids = list(job_ids)
    if not ids:
        return {}
    rows = await session.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))
    return {row[0]: JobStatus(row[1]) for row in rows.all()}


async def stop_requested_jobs(session: AsyncSession) -> list[ActiveJob]:
    """Non-terminal jobs whose stop was asked for."""
    rows = await session.execute(
        select(*_ACTIVE_COLUMNS).where(
            Job.stop_requested.is_(True),
            Job.status.in_((JobStatus.QUEUED.value, *_RUNNING)),
        )
    )
    return [_active(row) for row in rows.all()]


async def database_now(session: AsyncSession) -> datetime:
    value: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
    return value


async def cluster_of(session: AsyncSession, job_id: uuid.UUID) -> uuid.UUID | None:
    value: uuid.UUID | None = await session.scalar(select(Job.cluster_id).where(Job.id == job_id))
    return value


async def timed_jobs(session: AsyncSession, *, started_before: datetime) -> list[TimedJob]:
    """Jobs on Ray (PENDING since their submission, RUNNING since their start) since before `started_before`,
    whose stop nobody asked yet."""
    since = func.coalesce(Job.started_at, Job.submitted_at)
    query = select(Job.id, since, Job.config["max_run_seconds"]).where(
        Job.status.in_(_RUNNING), Job.stop_requested.is_(False), since < started_before
    )
    return [TimedJob(id=row[0], since=row[1], asked_max_seconds=row[2]) for row in await session.execute(query)]


async def request_stop(session: AsyncSession, job_id: uuid.UUID, *, reason: str) -> bool:
    """Ask the engine to stop a PENDING or RUNNING job, recording why; False when it ended or a stop was asked."""
    stopped = await session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_RUNNING), Job.stop_requested.is_(False))
        .values(stop_requested=True, stop_reason=reason)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return stopped is not None


async def load_one_active(session: AsyncSession, job_id: uuid.UUID) -> ActiveJob | None:
    row = (await session.execute(select(*_ACTIVE_COLUMNS).where(Job.id == job_id, Job.status.in_(_RUNNING)))).first()
    return _active(row) if row is not None else None


async def set_logs_key(session: AsyncSession, job_id: uuid.UUID, logs_key: str) -> None:
    """The logs stored at a reported end, unless Ray's confirmation stored the complete ones already."""
    await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.logs_key.is_(None))
        .values(logs_key=logs_key)
        .execution_options(synchronize_session=False)
    )


async def confirm_on_ray(session: AsyncSession, job_id: uuid.UUID, logs_key: str | None = None) -> None:
    """Ray agrees the job ended: its running slot is free (and `logs_key`, when given, holds its complete logs)."""
    values: dict[str, object] = {"ray_confirmed": True}
    if logs_key is not None:
        values["logs_key"] = logs_key
    await session.execute(
        update(Job).where(Job.id == job_id).values(**values).execution_options(synchronize_session=False)
    )
