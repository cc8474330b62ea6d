"""Endpoints under /api/v1/jobs/: lists, one job, result, logs, stop, sub-status, events, runtime jobs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Principal
from ..deps import PrincipalDep, SessionDep, SettingsDep, StateDep, StorageDep, UserDep, parse_uuid, state_of
from ..errors import BadRequest, ErrorDetail, ValidationFailed, error_responses
from ..models import JobStatus
from ..repositories.jobs import JobFilters
from ..schemas.common import Message as MessageOut
from ..schemas.jobs import (
    JobEventIn,
    JobEventOut,
    JobLogsOut,
    JobOut,
    JobPage,
    JobResultOut,
    RuntimeJobIn,
    RuntimeJobOut,
    RuntimeJobsOut,
    SubStatus,
    SubStatusIn,
)
from ..schemas.programs import ProgramFilter
from ..services import jobs as service
from ..services.json_stream import decoded_chunks, spliced_json_body, string_field_body
from ..services.log_windows import MAX_TAIL_LINES
from ..services.logs import logs_json_body
from ..services.program_inputs import split_title
from ..state import GatewayState
from .job_bodies import RESULT_BODY, STOP_BODY, SUB_STATUS_BODY, BodyFieldsDep
from .routing import SlashRouter

router = SlashRouter(prefix="/jobs", tags=["jobs"])

MAX_OFFSET = 1_000_000_000
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
"""No NUL or control characters: they can name nothing, and PostgreSQL refuses NUL in text."""
_TZ_AFTER_SPACE = re.compile(r" (\d{2}(?::?\d{2})?)$")


def parse_created_after(value: str | None) -> datetime | None:
    """An ISO 8601 time (a `+` that arrived as a space is restored); naive times are UTC."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    for candidate in (text, _TZ_AFTER_SPACE.sub(r"+\1", text)):
        try:
            parsed = datetime.fromisoformat(candidate)
            return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            continue
    message = "not an ISO 8601 date and time (for example 2024-01-15T10:30:00Z)"
    raise ValidationFailed(
        f"Invalid request: created_after: {message}", [ErrorDetail(loc=["query", "created_after"], msg=message)]
    )


def _page(request: Request, count: int, results: list[dict[str, Any]], limit: int, offset: int) -> JobPage:
    """A page with absolute `next`/`previous` links: the request's URL with only `limit` and `offset` changed."""
    next_url = previous_url = None
    if offset + limit < count or offset > 0:
        # What starlette's `include_query_params` makes, without parsing and rebuilding the whole URL twice.
        base, _, query = str(request.url).partition("?")
        kept = [(key, value) for key, value in parse_qsl(query, keep_blank_values=True) if key not in _PAGING]

        def link(at: int) -> str:
            return f"{base}?{urlencode([*kept, ('limit', limit), ('offset', at)])}"

        if offset + limit < count:
            next_url = link(offset + limit)
        if offset > 0:
            previous_url = link(max(0, min(offset, count) - limit))
    return JobPage.model_validate({"count": count, "next": next_url, "previous": previous_url, "results": results})


_PAGING = frozenset({"limit", "offset"})


FunctionQuery = Annotated[
    str | None,
    Query(max_length=255, pattern=PRINTABLE, description="Only jobs of the function with this title."),
]
ProviderQuery = Annotated[
    str | None,
    Query(max_length=150, pattern=PRINTABLE, description="Only jobs of this provider's functions."),
]
StatusQuery = Annotated[JobStatus | None, Query(description="Only jobs in this status.")]
FilterQuery = Annotated[
    ProgramFilter | None, Query(description="`catalog`: provider functions; `serverless`: your own functions.")
]
CreatedAfterQuery = Annotated[
    str | None, Query(max_length=64, description="Only jobs created after this ISO 8601 time (naive: UTC).")
]
OffsetWindowQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=2**53,
        description="Logs from this byte on (a window of at most 4 MiB, whole lines), with `next_offset` to go on.",
    ),
]
FollowQuery = Annotated[
    bool,
    Query(
        description="Stream the logs as Server-Sent Events (`text/event-stream`) until the job ends: each event "
        "holds whole lines and, as its id, the offset after them; reconnect with `Last-Event-ID` to go on."
    ),
]
LastEventIdHeader = Annotated[
    str | None, Header(alias="Last-Event-ID", max_length=20, description="Go on after this event (follow only).")
]
TailQuery = Annotated[
    int | None,
    Query(ge=1, le=MAX_TAIL_LINES, description="Only the last N lines (within the last 4 MiB), with `next_offset`."),
]
LimitQuery = Annotated[
    int, Query(ge=1, description="Page size; a larger one than the gateway's maximum page size gets that maximum.")
]
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Jobs to skip.")]


def _filters(
    function: str | None, provider: str | None, status: JobStatus | None, kind: ProgramFilter | None, after: str | None
) -> JobFilters:
    if function:
        split_title(function, None)  # a 400 saying what a title may be; the filter itself stays as sent
    return JobFilters(
        function=function or None,
        provider=provider or None,
        status=status,
        catalog=None if kind is None else kind == ProgramFilter.CATALOG,
        created_after=parse_created_after(after),
    )


@router.get(
    "/",
    response_model=JobPage,
    summary="List your jobs, newest first",
    responses=error_responses(400, 401, 403),
)
async def list_jobs(
    request: Request,
    user: UserDep,
    function: FunctionQuery = None,
    provider: ProviderQuery = None,
    status: StatusQuery = None,
    filter: FilterQuery = None,
    created_after: CreatedAfterQuery = None,
    limit: LimitQuery = 10,
    offset: OffsetQuery = 0,
) -> JobPage:
    filters = _filters(function, provider, status, filter, created_after)
    state = state_of(request)  # not through dependencies: each one costs the hottest read about 10 µs
    max_page_size = state.settings.max_page_size
    limit = min(limit, max_page_size)  # clamped like the reference's paginator, not refused
    count, results = await service.list_jobs(
        state.db_engine, user=user, filters=filters, limit=limit, offset=offset, max_page_size=max_page_size
    )
    return _page(request, count, results, limit, offset)


@router.get(
    "/provider/",
    response_model=JobPage,
    summary="List the jobs of every user on the functions of the providers you administer",
    description="A user who administers no provider gets an empty page; naming a provider you do not administer "
    "answers 404.",
    responses=error_responses(400, 401, 403, 404),
)
async def list_provider_jobs(
    request: Request,
    session: SessionDep,
    user: UserDep,
    function: FunctionQuery = None,
    provider: ProviderQuery = None,
    status: StatusQuery = None,
    filter: FilterQuery = None,
    created_after: CreatedAfterQuery = None,
    limit: LimitQuery = 10,
    offset: OffsetQuery = 0,
) -> JobPage:
    filters = _filters(function, provider, status, filter, created_after)
    state = state_of(request)  # as the user list does
    max_page_size = state.settings.max_page_size
    limit = min(limit, max_page_size)
    count, results = await service.list_provider_jobs(
        session, state.db_engine, user=user, filters=filters, limit=limit, offset=offset, max_page_size=max_page_size
    )
    return _page(request, count, results, limit, offset)


@router.get(
    "/{job_id}/",
    response_model=JobOut,
    summary="Get one of your jobs",
    responses=error_responses(400, 401, 404),
)
async def get_job(
    session: SessionDep,
    storage: StorageDep,
    principal: PrincipalDep,
    job_id: str,
    with_result: Annotated[bool, Query(description="Include the job's result (default true).")] = True,
) -> Response:
    job, result = await service.get_job(
        session, storage, principal=principal, job_id=parse_uuid(job_id, "Job"), with_result=with_result
    )
    return job_response(job, result)


def job_response(job: JobOut, result: AsyncIterator[bytes] | bytes | None) -> Response:
    """The job as JSON with its `result` spliced in as the stored JSON text, never decoded and encoded again."""
    head = job.model_dump_json(exclude={"result"}).encode()
    if result is None or isinstance(result, bytes):
        return Response(head[:-1] + b',"result":' + (result or b"null") + b"}", media_type="application/json")
    return StreamingResponse(spliced_json_body(head, "result", result), media_type="application/json")


@router.get(
    "/{job_id}/result/",
    response_model=JobResultOut,
    summary="Get a job's result as a JSON string (204 when there is none yet)",
    responses={204: {"description": "The job has no result yet."}, **error_responses(401, 404)},
)
async def get_result(session: SessionDep, storage: StorageDep, principal: PrincipalDep, job_id: str) -> Response:
    result = await service.get_result(session, storage, principal=principal, job_id=parse_uuid(job_id, "Job"))
    if result is None:
        return Response(status_code=204)
    return StreamingResponse(string_field_body("result", decoded_chunks(result)), media_type="application/json")


@router.post(
    "/{job_id}/result/",
    response_model=JobOut,
    summary="Save a running job's result (legacy; a form or JSON field `result` holding a JSON string)",
    responses=error_responses(400, 401, 404, 409, 413),
    openapi_extra=RESULT_BODY,
)
async def save_result(
    fields: BodyFieldsDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    job_id: str,
) -> Response:
    job, text = await service.save_result(
        session,
        storage,
        principal=principal,
        job_id=parse_uuid(job_id, "Job"),
        result=fields.get("result"),
        max_bytes=settings.max_result_bytes,
    )
    return job_response(job, text.encode("utf-8"))


@router.get(
    "/{job_id}/logs/",
    response_model=JobLogsOut,
    summary="Get a job's logs (empty until it runs)",
    responses=error_responses(401, 404),
)
async def get_logs(
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    job_id: str,
    offset: OffsetWindowQuery = None,
    tail: TailQuery = None,
    follow: FollowQuery = False,
    last_event_id: LastEventIdHeader = None,
) -> Response:
    if follow:
        return await _follow_answer(state, session, principal, job_id, offset, tail, last_event_id, as_provider=False)
    return await _logs_answer(state, session, principal, job_id, offset, tail, as_provider=False)


async def _logs_answer(
    state: GatewayState,
    session: AsyncSession,
    principal: Principal,
    job_id: str,
    offset: int | None,
    tail: int | None,
    *,
    as_provider: bool,
) -> Response:
    """A window of the logs when `offset` or `tail` is given (with `next_offset`), else the whole logs streamed."""
    uuid_ = parse_uuid(job_id, "Job")
    if offset is not None or tail is not None:
        window = await service.read_logs_window(
            state, session, principal=principal, job_id=uuid_, offset=offset, tail=tail, as_provider=as_provider
        )
        return JSONResponse({"logs": window.text, "next_offset": window.next_offset})
    read = service.read_provider_logs if as_provider else service.read_logs
    pieces = await read(state, session, principal=principal, job_id=uuid_)
    return StreamingResponse(logs_json_body(pieces), media_type="application/json")


async def _follow_answer(
    state: GatewayState,
    session: AsyncSession,
    principal: Principal,
    job_id: str,
    offset: int | None,
    tail: int | None,
    last_event_id: str | None,
    *,
    as_provider: bool,
) -> Response:
    """The logs as Server-Sent Events from `Last-Event-ID`, else `offset`, else the start."""
    if tail is not None:
        raise BadRequest("Invalid request: follow goes with offset (or Last-Event-ID), not tail.")
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise BadRequest("Invalid request: Last-Event-ID must be a byte offset sent as an event id.")
        offset = int(last_event_id)
    events = await service.follow_logs(
        state,
        session,
        principal=principal,
        job_id=parse_uuid(job_id, "Job"),
        offset=offset or 0,
        as_provider=as_provider,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.get(
    "/{job_id}/provider-logs/",
    response_model=JobLogsOut,
    summary="Get the whole logs of a job of your provider's function (provider admins only)",
    responses=error_responses(401, 403, 404),
)
async def get_provider_logs(
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    job_id: str,
    offset: OffsetWindowQuery = None,
    tail: TailQuery = None,
    follow: FollowQuery = False,
    last_event_id: LastEventIdHeader = None,
) -> Response:
    if follow:
        return await _follow_answer(state, session, principal, job_id, offset, tail, last_event_id, as_provider=True)
    return await _logs_answer(state, session, principal, job_id, offset, tail, as_provider=True)


@router.post(
    "/{job_id}/stop/",
    response_model=MessageOut,
    summary="Stop a job (QUEUED: at once; PENDING or RUNNING: through Ray; finished: nothing to do)",
    responses=error_responses(401, 404),
    openapi_extra=STOP_BODY,
)
async def stop_job(state: StateDep, session: SessionDep, principal: PrincipalDep, job_id: str) -> MessageOut:
    message = await service.stop_job(
        session, principal=principal, job_id=parse_uuid(job_id, "Job"), wake=state.wake_dispatcher
    )
    return MessageOut(message=message)


@router.patch(
    "/{job_id}/sub_status/",
    response_model=JobOut,
    summary="Say what a running job is doing (form or JSON field `sub_status`)",
    responses=error_responses(400, 401, 404, 409, 413),
    openapi_extra=SUB_STATUS_BODY,
)
async def set_sub_status(
    fields: BodyFieldsDep, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, job_id: str
) -> JobOut:
    uuid_ = parse_uuid(job_id, "Job")
    try:
        body = SubStatusIn.model_validate({"sub_status": fields.get("sub_status")})
    except ValidationError:
        allowed = ", ".join(s.value for s in SubStatus)
        raise ValidationFailed(
            f"Invalid request: sub_status: must be one of {allowed}",
            [ErrorDetail(loc=["body", "sub_status"], msg=f"must be one of {allowed}")],
        ) from None
    return await service.set_sub_status(
        session, principal=principal, job_id=uuid_, sub_status=body.sub_status, max_events=settings.max_events_per_job
    )


@router.post(
    "/{job_id}/event/",
    response_model=JobEventOut,
    summary="Record an event of a job (what `send_error` posts from inside a job)",
    responses=error_responses(400, 401, 404, 409, 413, 429),
)
async def add_event(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, job_id: str, body: JobEventIn
) -> JobEventOut:
    return await service.add_event(
        session,
        principal=principal,
        job_id=parse_uuid(job_id, "Job"),
        event=body,
        max_events=settings.max_events_per_job,
    )


@router.get(
    "/{job_id}/events/",
    response_model=list[JobEventOut],
    summary="List a job's events, oldest first",
    responses=error_responses(400, 401, 404),
)
async def list_events(
    session: SessionDep,
    principal: PrincipalDep,
    job_id: str,
    type: Annotated[
        str | None, Query(max_length=32, pattern=r"^[A-Za-z_]*$", description="Only events of this type (e.g. ERROR).")
    ] = None,
) -> list[JobEventOut]:
    return await service.list_events(session, principal=principal, job_id=parse_uuid(job_id, "Job"), event_type=type)


@router.get(
    "/{job_id}/runtime_jobs/",
    response_model=RuntimeJobsOut,
    summary="List the Qiskit Runtime jobs a job started",
    responses=error_responses(401, 404),
)
async def list_runtime_jobs(session: SessionDep, principal: PrincipalDep, job_id: str) -> RuntimeJobsOut:
    rows = await service.list_runtime_jobs(session, principal=principal, job_id=parse_uuid(job_id, "Job"))
    return RuntimeJobsOut(runtime_jobs=rows)


@router.post(
    "/{job_id}/runtime_jobs/",
    response_model=RuntimeJobOut,
    summary="Record a Qiskit Runtime job a job started",
    responses=error_responses(400, 401, 404, 409, 429),
)
async def add_runtime_job(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, job_id: str, body: RuntimeJobIn
) -> RuntimeJobOut:
    return await service.add_runtime_job(
        session,
        principal=principal,
        job_id=parse_uuid(job_id, "Job"),
        body=body,
        max_runtime_jobs=settings.max_runtime_jobs_per_job,
    )
