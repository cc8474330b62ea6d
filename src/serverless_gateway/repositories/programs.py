"""SQL for programs, their group grants, and the race-safe insert of a queued job."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    Text,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import DriverStatement, DriverTransaction
from ..models import ACTIVE_STATUSES, Job, JobStatus, Program, ProgramAccess, Provider
from .access import program_manageable, program_runnable, program_visible

JOBS_CHANNEL = "gateway_jobs"
"""Postgres NOTIFY channel that tells every replica a job was queued."""

_RUN_LOCK_NAMESPACE = 0x5E4E  # first key of the per-user advisory lock taken when a job is queued
_JOB_TABLE = cast(Table, Job.__table__)


@dataclass(frozen=True, slots=True)
class ProgramRow:
    """A program with its provider's name and whether the reader may manage it (and so see its env_vars)."""

    program: Program
    provider_name: str | None
    can_manage: bool


@dataclass(frozen=True, slots=True)
class RunTarget:
    """The few columns a run needs, and whether the caller may run (not just view) the program."""

    id: uuid.UUID
    disabled: bool
    disabled_reason: str | None
    arguments_schema: str | None
    can_run: bool


def _with_provider(user_id: uuid.UUID) -> Select[Program, str, bool]:
    manageable = program_manageable(user_id)
    return select(Program, Provider.name, manageable).outerjoin(Provider, Provider.id == Program.provider_id)


def _rows(result: Any) -> list[ProgramRow]:
    return [ProgramRow(program=row[0], provider_name=row[1], can_manage=bool(row[2])) for row in result]


async def list_visible(
    session: AsyncSession, user_id: uuid.UUID, *, catalog: bool | None = None, provider: str | None = None
) -> list[ProgramRow]:
    """Programs the user may see, ordered by title then provider (user programs first)."""
    query = _with_provider(user_id).where(program_visible(user_id))
    if catalog is True:
        query = query.where(Program.provider_id.is_not(None))
    elif catalog is False:
        query = query.where(Program.provider_id.is_(None))
    if provider is not None:
        query = query.where(Provider.name == provider)
    query = query.order_by(Program.title, Provider.name.asc().nulls_first(), Program.id)
    return _rows(await session.execute(query))


async def find_visible(
    session: AsyncSession, user_id: uuid.UUID, *, title: str, provider: str | None
) -> ProgramRow | None:
    """The program named `title` (of `provider`, or the user's own when None) if the user may see it."""
    query = _with_provider(user_id).where(Program.title == title)
    if provider is None:
        query = query.where(Program.provider_id.is_(None), Program.author_id == user_id)
    else:
        query = query.where(Provider.name == provider, program_visible(user_id))
    rows = _rows(await session.execute(query))
    return rows[0] if rows else None


# The run path is the hot one: its statements are built and compiled once (DriverStatement), so each request
# skips building the SQL tree, SQLAlchemy's compiled-cache look-up and its parameter processing.
_UUID = PG_UUID(as_uuid=True)
_USER = cast(Any, bindparam("user_id", type_=_UUID))
_RUN_COLUMNS = (Program.id, Program.disabled, Program.disabled_reason, Program.arguments_schema)
_RUN_LOCK = func.pg_advisory_xact_lock(literal(_RUN_LOCK_NAMESPACE), func.hashtext(func.cast(_USER, Text)))
_FIND_OWN_FOR_RUN_STATEMENT = select(*_RUN_COLUMNS, literal(True), _RUN_LOCK).where(
    Program.provider_id.is_(None), Program.author_id == _USER, Program.title == bindparam("title")
)
_FIND_PROVIDED_FOR_RUN_STATEMENT = (
    select(*_RUN_COLUMNS, program_runnable(_USER), _RUN_LOCK)
    .join(Provider, Provider.id == Program.provider_id)
    .where(Provider.name == bindparam("provider"), Program.title == bindparam("title"), program_visible(_USER))
)
_FIND_OWN_FOR_RUN = DriverStatement(_FIND_OWN_FOR_RUN_STATEMENT)
_FIND_PROVIDED_FOR_RUN = DriverStatement(_FIND_PROVIDED_FOR_RUN_STATEMENT)
# Constants rendered into the SQL: a bound IN list would be expanded again at every execution.
_ACTIVE_LITERALS: list[ColumnElement[str]] = [literal_column(f"'{status.value}'") for status in sorted(ACTIVE_STATUSES)]


def _queue_job_statement() -> Select[Any]:
    author = bindparam("author_id", type_=_UUID)
    limit = bindparam("limit", type_=Integer)
    active = select(Job.id).where(Job.author_id == author, Job.status.in_(_ACTIVE_LITERALS)).limit(limit).subquery()
    below_limit = select(func.count()).select_from(active).scalar_subquery() < limit
    values = select(
        bindparam("job_id", type_=_UUID),
        bindparam("program_id", type_=_UUID),
        author,
        literal(JobStatus.QUEUED.value),
        bindparam("arguments", type_=Text),
        bindparam("config", type_=JSONB),
    ).where(below_limit)
    queued = (
        insert(_JOB_TABLE)
        .from_select(["id", "program_id", "author_id", "status", "arguments", "config"], values)
        .returning(_JOB_TABLE.c.id)
        .cte("queued")
    )
    return select(queued.c.id, func.pg_notify(JOBS_CHANNEL, func.cast(queued.c.id, Text)))


_QUEUE_JOB = DriverStatement(_queue_job_statement())


async def find_for_run(
    transaction: DriverTransaction, user_id: uuid.UUID, *, title: str, provider: str | None
) -> RunTarget | None:
    """Look the program up for a run and take the caller's queueing lock in the same round trip.

    The lock (released at commit or rollback) serialises one user's concurrent runs, so the active-job
    count taken afterwards by `queue_job_within_limit` cannot be raced past the limit.
    """
    if provider is None:
        row = await _FIND_OWN_FOR_RUN.fetchrow(transaction, {"user_id": user_id, "title": title})
    else:
        params = {"user_id": user_id, "title": title, "provider": provider}
        row = await _FIND_PROVIDED_FOR_RUN.fetchrow(transaction, params)
    if row is None:
        return None
    return RunTarget(id=row[0], disabled=row[1], disabled_reason=row[2], arguments_schema=row[3], can_run=bool(row[4]))


async def queue_job_within_limit(
    transaction: DriverTransaction,
    *,
    job_id: uuid.UUID,
    program_id: uuid.UUID,
    author_id: uuid.UUID,
    arguments: str,
    config: dict[str, Any],
    limit: int,
) -> bool:
    """Insert the QUEUED job only if its author has fewer than `limit` active jobs, and NOTIFY the replicas.

    One statement: count, insert and notify. False (nothing inserted) when the limit is reached.
    """
    params = {
        "job_id": job_id,
        "program_id": program_id,
        "author_id": author_id,
        "arguments": arguments,
        "config": config,
        "limit": limit,
    }
    return await _QUEUE_JOB.fetchrow(transaction, params) is not None


async def upsert_program(
    session: AsyncSession,
    *,
    values: dict[str, Any],
    updates: dict[str, Any],
) -> Program:
    """Insert the program, or update `updates` on the one with the same (author | provider, title).

    `values` holds the columns of a new row (the others take their defaults); the id of an updated row stays.
    """
    statement = insert(Program).values(**values)
    set_ = {**updates, "updated_at": func.now()}
    if values.get("provider_id") is None:
        statement = statement.on_conflict_do_update(
            index_elements=[Program.author_id, Program.title], index_where=Program.provider_id.is_(None), set_=set_
        )
    else:
        statement = statement.on_conflict_do_update(
            index_elements=[Program.provider_id, Program.title],
            index_where=Program.provider_id.is_not(None),
            set_=set_,
        )
    result = await session.execute(statement.returning(Program), execution_options={"populate_existing": True})
    program: Program = result.scalar_one()
    return program


async def provider_has_visible_program(session: AsyncSession, user_id: uuid.UUID, provider_id: uuid.UUID) -> bool:
    """Whether the user can see at least one of the provider's programs (so the provider is no secret to them)."""
    found = await session.scalar(
        select(exists().where(Program.provider_id == provider_id, program_visible(user_id)).correlate(None))
    )
    return bool(found)


async def get_provider_program(session: AsyncSession, *, provider_id: uuid.UUID, title: str) -> Program | None:
    return await session.scalar(select(Program).where(Program.provider_id == provider_id, Program.title == title))


async def grant_access(session: AsyncSession, program_id: uuid.UUID, group_id: uuid.UUID, level: str) -> None:
    """Let a group view or run a provider program; a second grant replaces the level."""
    statement = insert(ProgramAccess).values(program_id=program_id, group_id=group_id, level=level)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[ProgramAccess.program_id, ProgramAccess.group_id], set_={"level": statement.excluded.level}
        )
    )
