"""Jobs: listing, reading, results, logs, stop, sub-status, events and runtime jobs, with their access rules."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ..auth import Principal
from ..db import call_after_commit
from ..errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests
from ..models import Job, JobEvent, JobStatus
from ..repositories import accounts as accounts_repo
from ..repositories import jobs as repo
from ..repositories.access import is_provider_admin
from ..schemas.jobs import (
    JobEventIn,
    JobEventOut,
    JobOut,
    JobProgramOut,
    RuntimeJobIn,
    RuntimeJobOut,
    SubStatus,
)
from ..state import GatewayState
from ..storage.base import Storage
from . import log_follow, log_windows, logs, results
from .job_state import transition
from .results import MAX_JSON_DEPTH, nested_deeper_than

MAX_EVENT_BYTES = 256 * 1024
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
ORIGIN_API = "API"


def job_not_found() -> NotFound:
    return NotFound("Job not found.")


def _program_out(found: repo.JobWithProgram) -> JobProgramOut:
    return JobProgramOut(id=found.job.program_id, title=found.program_title, provider=found.provider_name)


def job_out(found: repo.JobWithProgram) -> JobOut:
    """The job as the API shows it, without its result (the API adds the stored text as it is)."""
    job = found.job
    return JobOut(
        id=job.id,
        status=JobStatus(job.status),
        sub_status=job.sub_status,
        program=_program_out(found),
        created=job.created_at,
        updated=job.updated_at,
        started=job.started_at,
        finished=job.finished_at,
        message=job.message,
    )


def summary_fields(row: repo.JobListRow) -> dict[str, Any]:
    """A list item as the fields of `JobSummaryOut`: a page is validated once as a whole, not item by item."""
    return {
        "id": row.id,
        "status": row.status,
        "sub_status": row.sub_status,
        "program": {"id": row.program_id, "title": row.program_title, "provider": row.provider_name},
        "created": row.created_at,
        "updated": row.updated_at,
        "started": row.started_at,
        "finished": row.finished_at,
    }


def _check_limit(limit: int, max_page_size: int) -> None:
    if not 1 <= limit <= max_page_size:
        raise BadRequest(f"Invalid request: limit: must be between 1 and {max_page_size}.")


async def list_jobs(
    engine: AsyncEngine, *, user: Principal, filters: repo.JobFilters, limit: int, offset: int, max_page_size: int
) -> tuple[int, list[dict[str, Any]]]:
    """The caller's own jobs, newest first: (total count, one page)."""
    _check_limit(limit, max_page_size)
    count, rows = await repo.list_user_jobs(engine, user_id=user.user_id, filters=filters, limit=limit, offset=offset)
    return count, [summary_fields(row) for row in rows]


async def list_provider_jobs(
    session: AsyncSession,
    engine: AsyncEngine,
    *,
    user: Principal,
    filters: repo.JobFilters,
    limit: int,
    offset: int,
    max_page_size: int,
) -> tuple[int, list[dict[str, Any]]]:
    """Jobs on the programs of the providers the caller administers; a named provider must be one of them."""
    _check_limit(limit, max_page_size)
    if filters.provider is not None:
        provider = await accounts_repo.get_provider_by_name(session, filters.provider)
        if provider is None or not await is_provider_admin(session, user.user_id, provider.id):
            raise NotFound(f"Provider {filters.provider!r} not found, or you are not one of its admins.")
    count, rows = await repo.list_provider_jobs(
        engine, admin_id=user.user_id, filters=filters, limit=limit, offset=offset
    )
    return count, [summary_fields(row) for row in rows]


async def _own_job(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, *, with_result: bool = False, lock: bool = False
) -> repo.JobWithProgram:
    principal.check_job(job_id)
    found = await repo.get_job(session, job_id=job_id, author_id=principal.user_id, with_result=with_result, lock=lock)
    if found is None:
        raise job_not_found()
    return found


async def get_job(
    session: AsyncSession, storage: Storage, *, principal: Principal, job_id: uuid.UUID, with_result: bool
) -> tuple[JobOut, AsyncIterator[bytes] | None]:
    """The job, and its result text in chunks when asked for and there is one."""
    found = await _own_job(session, principal, job_id, with_result=with_result)
    result = await results.open_result(storage, found.job) if with_result else None
    return job_out(found), result


async def get_result(
    session: AsyncSession, storage: Storage, *, principal: Principal, job_id: uuid.UUID
) -> AsyncIterator[bytes] | None:
    """The result exactly as stored (JSON text, in chunks), or None when there is none yet."""
    found = await _own_job(session, principal, job_id, with_result=True)
    return await results.open_result(storage, found.job)


def _too_deep(what: str) -> BadRequest:
    return BadRequest(f"Invalid request: {what}: nested more than {MAX_JSON_DEPTH} levels deep.")


async def save_result(
    session: AsyncSession, storage: Storage, *, principal: Principal, job_id: uuid.UUID, result: Any, max_bytes: int
) -> tuple[JobOut, str]:
    """Legacy `save_result`: store the result of a job that has not ended yet (409 once it has).

    The result is checked before the job's row is locked; a stored copy it replaces goes after the commit.
    """
    text = await results.result_text(result, max_bytes=max_bytes)
    found = await _own_job(session, principal, job_id, lock=True)
    job = found.job
    status = JobStatus(job.status)
    if status.is_terminal():
        raise Conflict(f"Job has already finished ({status.value}); its result can no longer change.")
    replaced = await results.store_result(storage, job, text)
    await repo.save_job(session, job)
    if replaced is not None:
        call_after_commit(session, lambda: results.remove_after_commit(storage, replaced))
    return job_out(found), text


async def _logs_reader(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, *, as_provider: bool
) -> tuple[Job, bool]:
    """The job whose logs are read, and whether this reader sees them filtered (a provider function's user)."""
    if not as_provider:
        found = await _own_job(session, principal, job_id)
        return found.job, found.provider_id is not None
    principal.check_job(job_id)
    looked_up = await repo.get_job_for_reader(session, job_id=job_id, user_id=principal.user_id)
    if looked_up is None:
        raise job_not_found()
    found, _is_author, is_admin = looked_up
    if not is_admin:
        raise Forbidden("Only the admins of the function's provider may read its provider logs.")
    return found.job, False


async def read_logs(
    state: GatewayState, session: AsyncSession, *, principal: Principal, job_id: uuid.UUID
) -> AsyncIterator[str]:
    """The logs the job's author sees, in pieces (for a provider's function: without its `[PRIVATE]` lines)."""
    job, filtered = await _logs_reader(session, principal, job_id, as_provider=False)
    return await logs.open_job_logs(state, job, provider_program=filtered, for_provider=False)


async def read_provider_logs(
    state: GatewayState, session: AsyncSession, *, principal: Principal, job_id: uuid.UUID
) -> AsyncIterator[str]:
    """The whole logs of a provider function's job, in pieces, for the provider's admins only."""
    job, _ = await _logs_reader(session, principal, job_id, as_provider=True)
    return await logs.open_job_logs(state, job, provider_program=True, for_provider=True)


async def read_logs_window(
    state: GatewayState,
    session: AsyncSession,
    *,
    principal: Principal,
    job_id: uuid.UUID,
    offset: int | None,
    tail: int | None,
    as_provider: bool,
) -> log_windows.LogWindow:
    """A window of the job's logs (from a byte offset, or its last lines) with the offset to continue from."""
    if offset is not None and tail is not None:
        raise BadRequest("Invalid request: ask for either offset or tail, not both.")
    job, filtered = await _logs_reader(session, principal, job_id, as_provider=as_provider)
    return await log_windows.read_log_window(state, job, offset=offset, tail=tail, user_view=filtered)


async def follow_logs(
    state: GatewayState,
    session: AsyncSession,
    *,
    principal: Principal,
    job_id: uuid.UUID,
    offset: int,
    as_provider: bool,
) -> AsyncIterator[bytes]:
    """The job's log as Server-Sent Events from byte `offset` until it ended (access checked now, once)."""
    job, filtered = await _logs_reader(session, principal, job_id, as_provider=as_provider)
    return log_follow.follow_log_events(state, job.id, offset=offset, user_view=filtered)


async def _record(session: AsyncSession, job: Job, *, event_type: str, context: str, data: dict[str, Any]) -> JobEvent:
    return await repo.add_event(
        session, job_id=job.id, event_type=event_type, origin=ORIGIN_API, context=context, data=data
    )


async def stop_job(session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, wake: Callable[[], None]) -> str:
    """Stop a job: a QUEUED one at once (it is never submitted), a PENDING or RUNNING one through the engine."""
    found = await _own_job(session, principal, job_id, lock=True)
    job = found.job
    status = JobStatus(job.status)
    if status.is_terminal():
        return f"Job has already finished ({status.value}); nothing to stop."
    if status == JobStatus.QUEUED:
        transition(job, JobStatus.STOPPED, message="Stopped before it started.")
        await _record(session, job, event_type="STATUS_CHANGE", context="STOP", data={"status": JobStatus.STOPPED})
        await session.flush()
        return "Job stopped before it started; it was never submitted."
    if not job.stop_requested:
        job.stop_requested = True
        await _record(session, job, event_type="STATUS_CHANGE", context="STOP", data={"stop_requested": True})
        await session.flush()
    call_after_commit(session, wake)
    return f"Job stop requested; it was {status.value} and becomes STOPPED once Ray confirms."


def _refuse_if_ended(job: Job, what: str) -> None:
    status = JobStatus(job.status)
    if status.is_terminal():
        raise Conflict(f"Job has already finished ({status.value}); it takes no more {what}.")


async def set_sub_status(
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, sub_status: SubStatus, max_events: int
) -> JobOut:
    """What a running job says it is doing; refused (409) once the job has ended."""
    found = await _own_job(session, principal, job_id, lock=True)
    job = found.job
    status = JobStatus(job.status)
    if status.is_terminal():
        raise Conflict(f"Job has already finished ({status.value}); its sub-status can no longer change.")
    if job.sub_status != sub_status.value:
        job.sub_status = sub_status.value
        if await repo.count_events(session, job_id=job.id, at_most=max_events) < max_events:
            await _record(
                session,
                job,
                event_type="STATUS_CHANGE",
                context="SET_SUB_STATUS",
                data={"status": status.value, "sub_status": sub_status.value},
            )
        await repo.save_job(session, job)
    return job_out(found)


def _storable(value: Any) -> Any:
    """A JSON value PostgreSQL's jsonb accepts: no NUL characters, no lone surrogates, no NaN or infinities."""
    if isinstance(value, str):
        return _UNSTORABLE_CHARACTER.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_storable(str(key)): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def event_out(event: JobEvent) -> JobEventOut:
    return JobEventOut(
        event_type=event.event_type,
        origin=event.origin,
        context=event.context,
        created=event.created_at,
        data=dict(event.data or {}),
    )


async def add_event(
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, event: JobEventIn, max_events: int
) -> JobEventOut:
    """Record what `send_error` reports from inside a job: 409 once the job ended, 429 past `max_events`."""
    found = await _own_job(session, principal, job_id, lock=True)
    _refuse_if_ended(found.job, "events")
    if nested_deeper_than([event.code, event.message, event.exception, event.args], MAX_JSON_DEPTH):
        raise _too_deep("event")
    try:
        data = _storable(
            {"code": event.code, "message": event.message, "exception": event.exception, "args": event.args}
        )
        size = len(json.dumps(data))
    except RecursionError:
        raise _too_deep("event") from None
    if size > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"The event is larger than the limit of {MAX_EVENT_BYTES} bytes.")
    if await repo.count_events(session, job_id=job_id, at_most=max_events) >= max_events:
        raise TooManyRequests(f"The job has reached its limit of {max_events} events.")
    context = "SEND_ERROR" if event.type.upper() == "ERROR" else "SEND_EVENT"
    stored = await _record(session, found.job, event_type=event.type.upper(), context=context, data=data)
    return event_out(stored)


async def list_events(
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, event_type: str | None
) -> list[JobEventOut]:
    found = await _own_job(session, principal, job_id)
    kind = event_type.strip().upper() if event_type and event_type.strip() else None
    return [event_out(event) for event in await repo.list_events(session, job_id=found.job.id, event_type=kind)]


async def add_runtime_job(
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, body: RuntimeJobIn, max_runtime_jobs: int
) -> RuntimeJobOut:
    """Record a Qiskit Runtime job the job started: 409 once the job ended, 429 past `max_runtime_jobs`."""
    found = await _own_job(session, principal, job_id, lock=True)
    _refuse_if_ended(found.job, "runtime jobs")
    row = await repo.add_runtime_job(
        session,
        job_id=found.job.id,
        runtime_job=body.runtime_job,
        runtime_session=body.runtime_session or None,
        max_rows=max_runtime_jobs,
    )
    if row is None:
        raise TooManyRequests(f"The job has reached its limit of {max_runtime_jobs} runtime jobs.")
    return RuntimeJobOut(runtime_job=row.runtime_job, runtime_session=row.runtime_session)


async def list_runtime_jobs(session: AsyncSession, *, principal: Principal, job_id: uuid.UUID) -> list[RuntimeJobOut]:
    found = await _own_job(session, principal, job_id)
    rows = await repo.list_runtime_jobs(session, job_id=found.job.id)
    return [RuntimeJobOut(runtime_job=row.runtime_job, runtime_session=row.runtime_session) for row in rows]
