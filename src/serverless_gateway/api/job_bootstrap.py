"""What only a job's launcher calls: `bootstrap/` (its one-time code for its token and secrets) and `ended/`.

Nothing secret goes into Ray's records (job list, metadata, entrypoint, Ray's logs, which an operator's
dashboard shows to anyone who looks): the submission carries only a one-time code, spent by the first call.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field
from sqlalchemy import select

from ..auth import BOOTSTRAP_PREFIX, hash_token, new_job_token
from ..deps import PrincipalDep, SessionDep, StateDep, StorageDep, bearer_scheme, parse_uuid
from ..errors import Forbidden, Unauthorized, error_responses
from ..models import ACTIVE_STATUSES, Job, Program, Provider
from ..schemas.common import Message
from ..services.files import FileScope, list_files, user_files_prefix, user_files_space
from ..storage.base import StorageError
from .routing import SlashRouter

router = SlashRouter(prefix="/jobs", tags=["jobs"])


class JobBootstrapOut(BaseModel):
    """What only the job may know: its token, its arguments (a JSON string) and its program's env vars; with
    the names of its author's files of the function (None when storage could not list them: the launcher
    then lists them itself), so that a job without files makes no call for them."""

    token: str
    arguments: str
    env_vars: dict[str, str] = Field(default_factory=dict)
    files: list[str] | None = None


@router.post(
    "/{job_id}/bootstrap/",
    summary="A job's launcher fetches its token, arguments and env vars (once)",
    responses=error_responses(401),
    include_in_schema=False,
)
async def bootstrap_job(
    session: SessionDep,
    storage: StorageDep,
    job_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> JobBootstrapOut:
    code = credentials.credentials if credentials is not None else ""
    if not code.startswith(BOOTSTRAP_PREFIX) or len(code) > 200:
        raise Unauthorized("Invalid bootstrap code.")
    job = await session.scalar(
        select(Job)
        .where(Job.id == parse_uuid(job_id, "Job"), Job.status.in_([s.value for s in ACTIVE_STATUSES]))
        .with_for_update()
    )
    if job is None or job.bootstrap_hash is None or not hmac.compare_digest(job.bootstrap_hash, hash_token(code)):
        raise Unauthorized("Invalid bootstrap code, or it was used already.")
    found = (
        await session.execute(
            select(Program, Provider.name)
            .outerjoin(Provider, Provider.id == Program.provider_id)
            .where(Program.id == job.program_id)
        )
    ).first()
    token = new_job_token()
    job.token_hash = hash_token(token)
    job.bootstrap_hash = None
    if found is None:
        return JobBootstrapOut(token=token, arguments=job.arguments)
    program, provider = found
    env_vars = {str(k): str(v) for k, v in (program.env_vars or {}).items()}
    # The scope the launcher's own listing gets with the job token: the author's files of the job's function.
    scope = FileScope(
        prefix=user_files_prefix(job.author_id, provider, program.title),
        function=program.title,
        provider=provider,
        space=user_files_space(job.author_id),
    )
    try:
        files: list[str] | None = await list_files(storage, scope)
    except StorageError:
        files = None
    return JobBootstrapOut(token=token, arguments=job.arguments, env_vars=env_vars, files=files)


class JobEndedIn(BaseModel):
    exit_code: int = Field(ge=-255, le=255, examples=[0])
    result_in_log: bool = False
    """The launcher could not send the result and printed it into the log: the gateway reads it from there."""


@router.post(
    "/{job_id}/ended/",
    status_code=202,
    summary="A job's launcher reports that the entrypoint exited (after sending the result)",
    responses=error_responses(401, 403, 404),
    include_in_schema=False,
)
async def job_ended(state: StateDep, principal: PrincipalDep, job_id: str, body: JobEndedIn) -> Message:
    uuid_ = parse_uuid(job_id, "Job")
    if not principal.is_job:
        raise Forbidden("Only the job itself reports its end (with its job token).")
    principal.check_job(uuid_)
    if state.engine is not None:
        state.engine.job_ended(uuid_, body.exit_code, result_in_log=body.result_in_log)
    return Message(message="noted")
