"""Jobs: listing, reading, results, logs, stop, sub-status, events and runtime jobs, with their access rules."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Principal, is_provider_admin
from ..db import call_after_commit
from ..errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge
from ..models import Job, JobEvent, JobStatus
from ..repositories import accounts as accounts_repo
from ..repositories import jobs as repo
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
from . import logs, results
from .job_state import transition

MAX_EVENT_BYTES = 256 * 1024
MAX_JSON_DEPTH = 100
"""Deepest nesting of a result or an event: far beyond real use, well within what the JSON encoders accept."""
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
ORIGIN_API = "API"


def job_not_found() -> NotFound:
    return NotFound("Job not found.")


def _program_out(found: repo.JobWithProgram) -> JobProgramOut:
    return JobProgramOut(id=found.job.program_id, title=found.program_title, provider=found.provider_name)


def decode_result(text: str | None) -> Any:
    """The stored result as a JSON value; NaN and infinities (valid for Python, not for JSON) read as null."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=lambda _: None)
    except ValueError:
        return text


def job_out(found: repo.JobWithProgram, *, with_result: bool, result: str | None = None) -> JobOut:
    """The job as the API shows it; `result` is its result text when `with_result` (see services.results)."""
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
        result=decode_result(result) if with_result else None,
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
    session: AsyncSession, *, user: Principal, filters: repo.JobFilters, limit: int, offset: int, max_page_size: int
) -> tuple[int, list[dict[str, Any]]]:
    """The caller's own jobs, newest first: (total count, one page)."""
    _check_limit(limit, max_page_size)
    count, rows = await repo.list_user_jobs(session, user_id=user.user_id, filters=filters, limit=limit, offset=offset)
    return count, [summary_fields(row) for row in rows]


async def list_provider_jobs(
    session: AsyncSession, *, user: Principal, filters: repo.JobFilters, limit: int, offset: int, max_page_size: int
) -> tuple[int, list[dict[str, Any]]]:
    """Jobs on the programs of the providers the caller administers; a named provider must be one of them."""
    _check_limit(limit, max_page_size)
    if filters.provider is not None:
        provider = await accounts_repo.get_provider_by_name(session, filters.provider)
        if provider is None or not await is_provider_admin(session, user.user_id, provider.id):
            raise NotFound(f"Provider {filters.provider!r} not found, or you are not one of its admins.")
    count, rows = await repo.list_provider_jobs(
        session, admin_id=user.user_id, filters=filters, limit=limit, offset=offset
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
) -> JobOut:
    found = await _own_job(session, principal, job_id, with_result=with_result)
    if not with_result:
        return job_out(found, with_result=False)
    return job_out(found, with_result=True, result=await results.load_result(storage, found.job))


async def get_result(session: AsyncSession, storage: Storage, *, principal: Principal, job_id: uuid.UUID) -> str | None:
    """The result exactly as the job saved it (a JSON string), or None when there is none yet."""
    found = await _own_job(session, principal, job_id, with_result=True)
    return await results.load_result(storage, found.job)


def _is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (JSON allows their escapes; UTF-8 and PostgreSQL do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_deep(what: str) -> BadRequest:
    return BadRequest(f"Invalid request: {what}: nested more than {MAX_JSON_DEPTH} levels deep.")


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (walked without recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _lone_surrogate() -> BadRequest:
    return BadRequest("Invalid request: result: holds a lone Unicode surrogate, which is not valid text.")


def result_text(value: Any) -> str:
    """A result as sent (a JSON string, or a JSON value) turned into the JSON text to store; 400 when not JSON."""
    if value is None:
        raise BadRequest("Invalid request: result: Field required (a JSON string).")
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise BadRequest(f"Invalid request: result: not valid JSON ({exc}).") from None
        except RecursionError:
            raise _too_deep("result") from None
        if not _is_utf8(value):
            raise _lone_surrogate()
        if _nested_deeper_than(parsed, MAX_JSON_DEPTH):
            raise _too_deep("result")
        if _SURROGATE_ESCAPE.search(value) and not _is_utf8(json.dumps(parsed, ensure_ascii=False)):
            raise _lone_surrogate()
        return value
    if _nested_deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep("result")
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"Invalid request: result: not a JSON value ({exc}).") from None
    except RecursionError:
        raise _too_deep("result") from None
    if not _is_utf8(text):
        raise _lone_surrogate()
    return text


async def save_result(
    session: AsyncSession, storage: Storage, *, principal: Principal, job_id: uuid.UUID, result: Any, max_bytes: int
) -> JobOut:
    """Legacy `save_result`: store the result of a job that has not ended yet (409 once it has)."""
    text = result_text(result)
    if len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise PayloadTooLarge(f"The result is larger than the limit of {max_bytes} bytes.")
    found = await _own_job(session, principal, job_id, lock=True)
    job = found.job
    status = JobStatus(job.status)
    if status.is_terminal():
        raise Conflict(f"Job has already finished ({status.value}); its result can no longer change.")
    await results.store_result(storage, job, text)
    await repo.save_job(session, job)
    return job_out(found, with_result=True, result=text)


async def read_logs(
    state: GatewayState, session: AsyncSession, *, principal: Principal, job_id: uuid.UUID
) -> AsyncIterator[str]:
    """The logs the job's author sees, in pieces (for a provider's function: without its `[PRIVATE]` lines)."""
    found = await _own_job(session, principal, job_id)
    return await logs.open_job_logs(
        state, found.job, provider_program=found.provider_id is not None, for_provider=False
    )


async def read_provider_logs(
    state: GatewayState, session: AsyncSession, *, principal: Principal, job_id: uuid.UUID
) -> AsyncIterator[str]:
    """The whole logs of a provider function's job, in pieces, for the provider's admins only."""
    principal.check_job(job_id)
    looked_up = await repo.get_job_for_reader(session, job_id=job_id, user_id=principal.user_id)
    if looked_up is None:
        raise job_not_found()
    found, _is_author, is_admin = looked_up
    if not is_admin:
        raise Forbidden("Only the admins of the function's provider may read its provider logs.")
    return await logs.open_job_logs(state, found.job, provider_program=True, for_provider=True)


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


async def set_sub_status(
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, sub_status: SubStatus
) -> JobOut:
    """What a running job says it is doing; refused (409) once the job has ended."""
    found = await _own_job(session, principal, job_id, lock=True)
    job = found.job
    status = JobStatus(job.status)
    if status.is_terminal():
        raise Conflict(f"Job has already finished ({status.value}); its sub-status can no longer change.")
    if job.sub_status != sub_status.value:
        job.sub_status = sub_status.value
        await _record(
            session,
            job,
            event_type="STATUS_CHANGE",
            context="SET_SUB_STATUS",
            data={"status": status.value, "sub_status": sub_status.value},
        )
        await repo.save_job(session, job)
    return job_out(found, with_result=False)


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
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, event: JobEventIn
) -> JobEventOut:
    """Record what `send_error` reports from inside a job."""
    found = await _own_job(session, principal, job_id)
    if _nested_deeper_than([event.code, event.message, event.exception, event.args], MAX_JSON_DEPTH):
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
    session: AsyncSession, *, principal: Principal, job_id: uuid.UUID, body: RuntimeJobIn
) -> RuntimeJobOut:
    found = await _own_job(session, principal, job_id)
    row = await repo.add_runtime_job(
        session, job_id=found.job.id, runtime_job=body.runtime_job, runtime_session=body.runtime_session or None
    )
    return RuntimeJobOut(runtime_job=row.runtime_job, runtime_session=row.runtime_session)


async def list_runtime_jobs(session: AsyncSession, *, principal: Principal, job_id: uuid.UUID) -> list[RuntimeJobOut]:
    found = await _own_job(session, principal, job_id)
    rows = await repo.list_runtime_jobs(session, job_id=found.job.id)
    return [RuntimeJobOut(runtime_job=row.runtime_job, runtime_session=row.runtime_session) for row in rows]
