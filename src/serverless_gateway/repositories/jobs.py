"""SQL for reading jobs (one page query and one count per list), locking them, and their events and runtime jobs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from ..auth import admin_provider_ids
from ..models import Job, JobEvent, JobStatus, Program, Provider, RuntimeJob

MAX_EVENTS = 1000
MAX_RUNTIME_JOBS = 1000


@dataclass(frozen=True, slots=True)
class JobFilters:
    """The list filters; None means "any"."""

    function: str | None = None
    provider: str | None = None
    status: JobStatus | None = None
    catalog: bool | None = None
    created_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobListRow:
    id: uuid.UUID
    status: str
    sub_status: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    program_id: uuid.UUID
    program_title: str
    provider_name: str | None


@dataclass(frozen=True, slots=True)
class JobWithProgram:
    """A job (its `arguments` never loaded; `result` only when asked) with its program's title and provider."""

    job: Job
    program_title: str
    provider_id: uuid.UUID | None
    provider_name: str | None


_LIST_COLUMNS = (
    Job.id,
    Job.status,
    Job.sub_status,
    Job.created_at,
    Job.updated_at,
    Job.started_at,
    Job.finished_at,
    Program.id,
    Program.title,
    Provider.name,
)


def _provider_id_named(name: str) -> ColumnElement[Any]:
    return select(Provider.id).where(Provider.name == name).scalar_subquery()


def _program_conditions(filters: JobFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.function is not None:
        conditions.append(Program.title == filters.function)
    if filters.provider is not None:
        conditions.append(Program.provider_id == _provider_id_named(filters.provider))
    if filters.catalog is True:
        conditions.append(Program.provider_id.is_not(None))
    elif filters.catalog is False:
        conditions.append(Program.provider_id.is_(None))
    return conditions


def _job_conditions(filters: JobFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.status is not None:
        conditions.append(Job.status == filters.status.value)
    if filters.created_after is not None:
        conditions.append(Job.created_at > filters.created_after)
    return conditions


async def _page(
    session: AsyncSession,
    *,
    job_scope: Sequence[ColumnElement[bool]],
    program_scope: Sequence[ColumnElement[bool]],
    filters: JobFilters,
    limit: int,
    offset: int,
) -> tuple[int, list[JobListRow]]:
    """The page, newest first, and the total count, in one round trip (the count rides along as an InitPlan)."""
    job_conditions = [*job_scope, *_job_conditions(filters)]
    program_conditions = [*program_scope, *_program_conditions(filters)]
    count_query = select(func.count()).select_from(Job)
    if program_conditions:
        count_query = count_query.join(Program, Program.id == Job.program_id)
    count_query = count_query.where(*job_conditions, *program_conditions)
    page_query = (
        select(*_LIST_COLUMNS, count_query.scalar_subquery().correlate(None))
        .select_from(Job)
        .join(Program, Program.id == Job.program_id)
        .outerjoin(Provider, Provider.id == Program.provider_id)
        .where(*job_conditions, *program_conditions)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
        .offset(offset)
    )
    result = (await session.execute(page_query)).all()
    rows = [
        JobListRow(
            id=row[0],
            status=row[1],
            sub_status=row[2],
            created_at=row[3],
            updated_at=row[4],
            started_at=row[5],
            finished_at=row[6],
            program_id=row[7],
            program_title=row[8],
            provider_name=row[9],
        )
        for row in result
    ]
    if result:
        return int(result[0][10]), rows
    if offset == 0:
        return 0, rows
    count = await session.scalar(count_query)  # past the last page: the count alone
    return int(count or 0), rows


async def list_user_jobs(
    session: AsyncSession, *, user_id: uuid.UUID, filters: JobFilters, limit: int, offset: int
) -> tuple[int, list[JobListRow]]:
    """The user's own jobs matching `filters`: (total count, one page)."""
    return await _page(
        session, job_scope=[Job.author_id == user_id], program_scope=[], filters=filters, limit=limit, offset=offset
    )


async def list_provider_jobs(
    session: AsyncSession, *, admin_id: uuid.UUID, filters: JobFilters, limit: int, offset: int
) -> tuple[int, list[JobListRow]]:
    """Jobs of every user on the programs of the providers `admin_id` administers."""
    scope = [Program.provider_id.in_(admin_provider_ids(admin_id))]
    return await _page(session, job_scope=[], program_scope=scope, filters=filters, limit=limit, offset=offset)


def _job_query(*, with_result: bool) -> Select[Job, str, uuid.UUID | None, str | None]:
    options = [defer(Job.arguments, raiseload=True)]
    if not with_result:
        options.append(defer(Job.result, raiseload=True))
    return (
        select(Job, Program.title, Program.provider_id, Provider.name)
        .join(Program, Program.id == Job.program_id)
        .outerjoin(Provider, Provider.id == Program.provider_id)
        .options(*options)
    )


async def get_job(
    session: AsyncSession, *, job_id: uuid.UUID, author_id: uuid.UUID, with_result: bool = False, lock: bool = False
) -> JobWithProgram | None:
    """The author's job; `lock` takes its row lock (SELECT ... FOR UPDATE) for a status-changing request."""
    query = _job_query(with_result=with_result).where(Job.id == job_id, Job.author_id == author_id)
    if lock:
        query = query.with_for_update(of=Job).execution_options(populate_existing=True)
    row = (await session.execute(query)).first()
    if row is None:
        return None
    return JobWithProgram(job=row[0], program_title=row[1], provider_id=row[2], provider_name=row[3])


async def get_job_for_reader(
    session: AsyncSession, *, job_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[JobWithProgram, bool, bool] | None:
    """A job its author or an admin of its program's provider may see: (job, is_author, is_provider_admin)."""
    is_admin = and_(Program.provider_id.is_not(None), Program.provider_id.in_(admin_provider_ids(user_id)))
    query = (
        _job_query(with_result=False)
        .add_columns(Job.author_id == user_id, is_admin)
        .where(Job.id == job_id, (Job.author_id == user_id) | is_admin)
    )
    row = (await session.execute(query)).first()
    if row is None:
        return None
    found = JobWithProgram(job=row[0], program_title=row[1], provider_id=row[2], provider_name=row[3])
    return found, bool(row[4]), bool(row[5])


async def add_event(
    session: AsyncSession, *, job_id: uuid.UUID, event_type: str, origin: str, context: str, data: dict[str, Any]
) -> JobEvent:
    event = JobEvent(id=uuid.uuid4(), job_id=job_id, event_type=event_type, origin=origin, context=context, data=data)
    session.add(event)
    await session.flush()
    await session.refresh(event, ["created_at"])
    return event


async def list_events(session: AsyncSession, *, job_id: uuid.UUID, event_type: str | None) -> list[JobEvent]:
    """The job's events, oldest first (at most MAX_EVENTS, the latest ones)."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if event_type is not None:
        query = query.where(JobEvent.event_type == event_type)
    latest = query.order_by(JobEvent.created_at.desc(), JobEvent.id.desc()).limit(MAX_EVENTS)
    return list(reversed((await session.scalars(latest)).all()))


async def add_runtime_job(
    session: AsyncSession, *, job_id: uuid.UUID, runtime_job: str, runtime_session: str | None
) -> RuntimeJob:
    """Record a Qiskit Runtime job the job started; recording the same one twice keeps one row."""
    existing = await session.scalar(
        select(RuntimeJob).where(RuntimeJob.job_id == job_id, RuntimeJob.runtime_job == runtime_job)
    )
    if existing is not None:
        if runtime_session is not None and existing.runtime_session != runtime_session:
            existing.runtime_session = runtime_session
            await session.flush()
        return existing
    row = RuntimeJob(id=uuid.uuid4(), job_id=job_id, runtime_job=runtime_job, runtime_session=runtime_session)
    session.add(row)
    await session.flush()
    return row


async def list_runtime_jobs(session: AsyncSession, *, job_id: uuid.UUID) -> list[RuntimeJob]:
    query = (
        select(RuntimeJob)
        .where(RuntimeJob.job_id == job_id)
        .order_by(RuntimeJob.created_at, RuntimeJob.id)
        .limit(MAX_RUNTIME_JOBS)
    )
    return list((await session.scalars(query)).all())


async def program_of_job(session: AsyncSession, *, job_id: uuid.UUID) -> uuid.UUID | None:
    """The program a job runs (what a job token's file access is limited to)."""
    return await session.scalar(select(Job.program_id).where(Job.id == job_id))


async def save_job(session: AsyncSession, job: Job) -> None:
    """Flush the job's changes and read back the `updated_at` the database gave it."""
    await session.flush()
    await session.refresh(job, attribute_names=["updated_at"])
