"""SQL for reading jobs (one page query and one count per list), locking them, and their events and runtime jobs."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, Select, Table, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import defer

from ..db import DriverStatement
from ..models import Job, JobEvent, JobStatus, Program, Provider, RuntimeJob
from .access import admin_provider_ids, program_administered

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


_JOB = cast(Table, Job.__table__).c
_PROGRAM = cast(Table, Program.__table__).c
_PROVIDER = cast(Table, Provider.__table__).c
_LIST_COLUMNS = (
    _JOB.id,
    _JOB.status,
    _JOB.sub_status,
    _JOB.created_at,
    _JOB.updated_at,
    _JOB.started_at,
    _JOB.finished_at,
    _PROGRAM.id,
    _PROGRAM.title,
    _PROVIDER.name,
)


_COUNT_AT = len(_LIST_COLUMNS)
"""A page row is `_LIST_COLUMNS` (in `JobListRow`'s field order), then the total count."""


@dataclass(frozen=True, slots=True)
class _Shape:
    """Which filters a list uses: the statements depend on this only; the values travel as parameters."""

    function: bool
    provider: bool
    status: bool
    catalog: bool | None
    created_after: bool

    @classmethod
    def of(cls, filters: JobFilters) -> _Shape:
        return cls(
            function=filters.function is not None,
            provider=filters.provider is not None,
            status=filters.status is not None,
            catalog=filters.catalog,
            created_after=filters.created_after is not None,
        )


def _parameters(filters: JobFilters, **more: Any) -> dict[str, Any]:
    values = {
        "function": filters.function,
        "provider": filters.provider,
        "status": filters.status.value if filters.status is not None else None,
        "created_after": filters.created_after,
    }
    return {**{name: value for name, value in values.items() if value is not None}, **more}


def _conditions(shape: _Shape) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]]]:
    """(conditions on the job, conditions on its program) for the filters in `shape`."""
    on_job: list[ColumnElement[bool]] = []
    if shape.status:
        on_job.append(_JOB.status == bindparam("status"))
    if shape.created_after:
        on_job.append(_JOB.created_at > bindparam("created_after"))
    on_program: list[ColumnElement[bool]] = []
    if shape.function:
        on_program.append(_PROGRAM.title == bindparam("function"))
    if shape.provider:
        named = select(_PROVIDER.id).where(_PROVIDER.name == bindparam("provider")).scalar_subquery()
        on_program.append(_PROGRAM.provider_id == named)
    if shape.catalog is True:
        on_program.append(_PROGRAM.provider_id.is_not(None))
    elif shape.catalog is False:
        on_program.append(_PROGRAM.provider_id.is_(None))
    return on_job, on_program


def _statements(
    shape: _Shape, *, job_scope: Sequence[ColumnElement[bool]], program_scope: Sequence[ColumnElement[bool]]
) -> tuple[Select[Any], Select[Any]]:
    """The page statement (newest first, with the total count riding along as an InitPlan) and the count alone."""
    on_job, on_program = _conditions(shape)
    job_conditions = [*job_scope, *on_job]
    program_conditions = [*program_scope, *on_program]
    count = select(func.count()).select_from(cast(Table, Job.__table__))
    if program_conditions:
        count = count.join(cast(Table, Program.__table__), _PROGRAM.id == _JOB.program_id)
    count = count.where(*job_conditions, *program_conditions)
    page = (
        select(*_LIST_COLUMNS, count.scalar_subquery().correlate(None))
        .select_from(
            cast(Table, Job.__table__)
            .join(cast(Table, Program.__table__), _PROGRAM.id == _JOB.program_id)
            .outerjoin(cast(Table, Provider.__table__), _PROVIDER.id == _PROGRAM.provider_id)
        )
        .where(*job_conditions, *program_conditions)
        .order_by(_JOB.created_at.desc(), _JOB.id.desc())
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )
    return page, count


@dataclass(frozen=True, slots=True)
class _ListStatements:
    """A list's page statement and its count alone, compiled once to asyncpg's SQL."""

    page: DriverStatement
    count: DriverStatement

    @classmethod
    def build(
        cls, shape: _Shape, *, job_scope: Sequence[ColumnElement[bool]], program_scope: Sequence[ColumnElement[bool]]
    ) -> _ListStatements:
        page, count = _statements(shape, job_scope=job_scope, program_scope=program_scope)
        return cls(DriverStatement(page), DriverStatement(count))


# Built once per shape, with the caller as a bind parameter: a request only binds its values.
@functools.lru_cache(maxsize=64)
def _user_statements(shape: _Shape) -> _ListStatements:
    return _ListStatements.build(shape, job_scope=[_JOB.author_id == bindparam("author_id")], program_scope=[])


@functools.lru_cache(maxsize=64)
def _provider_statements(shape: _Shape) -> _ListStatements:
    scope = [_PROGRAM.provider_id.in_(admin_provider_ids(bindparam("admin_id")))]
    return _ListStatements.build(shape, job_scope=[], program_scope=scope)


async def _page(
    engine: AsyncEngine, statements: _ListStatements, parameters: dict[str, Any]
) -> tuple[int, list[JobListRow]]:
    """One round trip for the page and the count; a second one only past the last page.

    Lists are the hottest reads, so they skip the session: each statement is a read of its own through asyncpg
    (`DriverStatement.fetch`); the count rides along with the page, so the two always agree.
    """
    result = await statements.page.fetch(engine, parameters)
    rows = [JobListRow(*row[:_COUNT_AT]) for row in result]
    if result:
        return int(result[0][_COUNT_AT]), rows
    if parameters["offset"] == 0:
        return 0, rows
    (total,) = (await statements.count.fetch(engine, parameters))[0]
    return int(total), rows


async def list_user_jobs(
    engine: AsyncEngine, *, user_id: uuid.UUID, filters: JobFilters, limit: int, offset: int
) -> tuple[int, list[JobListRow]]:
    """The user's own jobs matching `filters`: (total count, one page)."""
    parameters = _parameters(filters, author_id=user_id, limit=limit, offset=offset)
    return await _page(engine, _user_statements(_Shape.of(filters)), parameters)


async def list_provider_jobs(
    engine: AsyncEngine, *, admin_id: uuid.UUID, filters: JobFilters, limit: int, offset: int
) -> tuple[int, list[JobListRow]]:
    """Jobs of every user on the programs of the providers `admin_id` administers."""
    parameters = _parameters(filters, admin_id=admin_id, limit=limit, offset=offset)
    return await _page(engine, _provider_statements(_Shape.of(filters)), parameters)


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
    is_admin = program_administered(user_id)
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


async def count_events(session: AsyncSession, *, job_id: uuid.UUID, at_most: int) -> int:
    """How many events the job has, counted no further than `at_most` (the quota), so the count stays cheap."""
    capped = select(JobEvent.id).where(JobEvent.job_id == job_id).limit(at_most).subquery()
    return await session.scalar(select(func.count()).select_from(capped)) or 0


async def list_events(session: AsyncSession, *, job_id: uuid.UUID, event_type: str | None) -> list[JobEvent]:
    """The job's events, oldest first (at most MAX_EVENTS, the latest ones)."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if event_type is not None:
        query = query.where(JobEvent.event_type == event_type)
    latest = query.order_by(JobEvent.created_at.desc(), JobEvent.id.desc()).limit(MAX_EVENTS)
    return list(reversed((await session.scalars(latest)).all()))


async def add_runtime_job(
    session: AsyncSession, *, job_id: uuid.UUID, runtime_job: str, runtime_session: str | None, max_rows: int
) -> RuntimeJob | None:
    """Record a Qiskit Runtime job the job started (the same one twice keeps one row); None when the job has
    `max_rows` already."""
    existing = await session.scalar(
        select(RuntimeJob).where(RuntimeJob.job_id == job_id, RuntimeJob.runtime_job == runtime_job)
    )
    if existing is not None:
        if runtime_session is not None and existing.runtime_session != runtime_session:
            existing.runtime_session = runtime_session
            await session.flush()
        return existing
    capped = select(RuntimeJob.id).where(RuntimeJob.job_id == job_id).limit(max_rows).subquery()
    if (await session.scalar(select(func.count()).select_from(capped)) or 0) >= max_rows:
        return None
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


async def count_active_by_status(session: AsyncSession) -> dict[str, int]:
    """How many jobs are QUEUED, PENDING or RUNNING (read from the partial index of active jobs)."""
    active = [status.value for status in (JobStatus.QUEUED, JobStatus.PENDING, JobStatus.RUNNING)]
    rows = await session.execute(select(Job.status, func.count()).where(Job.status.in_(active)).group_by(Job.status))
    return {str(status): int(count) for status, count in rows.tuples()}
