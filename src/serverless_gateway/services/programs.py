"""Programs: upload (an upsert), listing, lookup, run, argument validation and group grants."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Principal
from ..config import Settings
from ..db import DriverTransaction
from ..errors import BadRequest, Forbidden, Locked, NotFound, TooManyRequests
from ..models import AccessLevel, JobStatus, Program, ProgramType
from ..repositories import accounts as accounts_repo
from ..repositories import programs as repo
from ..repositories import retention as retention_repo
from ..repositories.access import is_provider_admin
from ..schemas.programs import ProgramFilter, ProgramOut, RunOut, RunRequest, ValidateArgumentsOut
from ..storage import Storage
from . import accounts
from .argument_schemas import check_arguments_off_loop
from .artifacts import ArtifactLimits, check_artifact, check_entrypoint, store_artifact
from .program_inputs import (
    MAX_DESCRIPTION,
    MAX_VERSION,
    check_arguments_schema,
    check_run_config,
    check_text,
    decode_schema,
    invalid,
    parse_arguments,
    parse_dependencies,
    parse_env_vars,
    parse_type,
    split_title,
)


@dataclass(frozen=True, slots=True)
class UploadFields:
    """The multipart fields of an upload, as sent (None: not sent)."""

    title: str
    entrypoint: str | None = None
    image: str | None = None
    provider: str | None = None
    dependencies: list[str] | None = None
    env_vars: str | None = None
    description: str | None = None
    version: str | None = None
    type: str | None = None
    arguments_schema: str | None = None


def program_out(row: repo.ProgramRow) -> ProgramOut:
    program = row.program
    return ProgramOut(
        id=program.id,
        title=program.title,
        entrypoint=program.entrypoint,
        artifact=program.artifact_sha256 or None,
        dependencies=list(program.dependencies or []),
        env_vars=dict(program.env_vars or {}) if row.can_manage else {},
        provider=row.provider_name,
        type=ProgramType(program.type),
        version=program.version,
        description=program.description,
        disabled=program.disabled,
        disabled_reason=program.disabled_reason,
        arguments_schema=decode_schema(program.arguments_schema),
        created=program.created_at,
        updated=program.updated_at,
    )


def _not_found(title: str, provider: str | None) -> NotFound:
    name = f"{provider}/{title}" if provider else title
    return NotFound(f"Program {name!r} not found.")


async def _provider_for_upload(session: AsyncSession, user: Principal, name: str) -> uuid.UUID:
    """The provider's id if the user administers it; 404 when unknown or invisible, 403 when only visible."""
    provider = await accounts_repo.get_provider_by_name(session, name)
    if provider is None:
        raise NotFound(f"Provider {name!r} not found.")
    if not await is_provider_admin(session, user.user_id, provider.id):
        if await repo.provider_has_visible_program(session, user.user_id, provider.id):
            raise Forbidden(f"Only admins of provider {name!r} may upload its programs.")
        raise NotFound(f"Provider {name!r} not found.")
    return provider.id


async def upload_program(
    session: AsyncSession,
    *,
    storage: Storage,
    settings: Settings,
    user: Principal,
    fields: UploadFields,
    artifact: BinaryIO | None,
) -> ProgramOut:
    """Create or update (same author or provider, same title) a program; `artifact` is a seekable tar file."""
    provider_name, title = split_title(fields.title, fields.provider)
    if fields.image:
        raise BadRequest(
            "Container images are not supported by this gateway: upload a tar artifact with an entrypoint instead."
        )
    if not fields.entrypoint:
        raise invalid("entrypoint", "Field required")
    entrypoint = check_entrypoint(fields.entrypoint)
    if artifact is None:
        raise invalid("artifact", "Field required (a tar archive of the program's directory)")
    dependencies = parse_dependencies(fields.dependencies, settings.dependency_allowlist)
    env_vars = parse_env_vars(fields.env_vars)
    program_type = parse_type(fields.type)
    description = check_text("description", fields.description, MAX_DESCRIPTION)
    version = check_text("version", fields.version, MAX_VERSION)
    schema_sent, schema_text = await check_arguments_schema(fields.arguments_schema)

    # The artifact is checked and stored before the first query: no transaction stays open during that work.
    info = await check_artifact(artifact, entrypoint=entrypoint, limits=ArtifactLimits.from_settings(settings))
    await retention_repo.hold_artifacts_shared(session)  # no collection removes it before this commits
    key = await store_artifact(storage, artifact, info)
    provider_id = await _provider_for_upload(session, user, provider_name) if provider_name else None

    updates: dict[str, Any] = {"entrypoint": entrypoint, "artifact_key": key, "artifact_sha256": info.sha256}
    optional: dict[str, Any] = {
        "dependencies": dependencies,
        "env_vars": env_vars,
        "type": program_type.value if program_type else None,
        "description": description,
        "version": version,
    }
    updates.update({name: value for name, value in optional.items() if value is not None})
    if schema_sent:
        updates["arguments_schema"] = schema_text
    values = {
        "id": uuid.uuid4(),
        "title": title,
        "provider_id": provider_id,
        "author_id": user.user_id,
        **updates,
    }
    program = await repo.upsert_program(session, values=values, updates=updates)
    return program_out(repo.ProgramRow(program=program, provider_name=provider_name, can_manage=True))


async def list_programs(
    session: AsyncSession, *, user: Principal, kind: ProgramFilter | None = None, provider: str | None = None
) -> list[ProgramOut]:
    catalog = None if kind is None else kind == ProgramFilter.CATALOG
    rows = await repo.list_visible(session, user.user_id, catalog=catalog, provider=provider or None)
    return [program_out(row) for row in rows]


async def get_program(session: AsyncSession, *, user: Principal, title: str, provider: str | None) -> ProgramOut:
    provider, title = split_title(title, provider)
    row = await repo.find_visible(session, user.user_id, title=title, provider=provider)
    if row is None:
        raise _not_found(title, provider)
    return program_out(row)


async def run_program(
    transaction: DriverTransaction,
    *,
    settings: Settings,
    user: Principal,
    request: RunRequest,
    wake: Callable[[], None],
) -> RunOut:
    """Queue a job of the program for the caller, within the caller's active-job limit."""
    provider, title = split_title(request.title, request.provider)
    arguments_text, arguments = parse_arguments(request.arguments, max_bytes=settings.max_arguments_bytes)
    config = request.config.model_dump(exclude_none=True) if request.config is not None else {}
    check_run_config(config, settings.max_workers, settings.max_job_seconds)

    target = await repo.find_for_run(transaction, user.user_id, title=title, provider=provider)
    if target is None:
        raise _not_found(title, provider)
    if not target.can_run:
        raise Forbidden("You may view this program but not run it.")
    if target.disabled:
        reason = target.disabled_reason or "no reason given"
        raise Locked(f"Program {title!r} is disabled: {reason}")
    await check_arguments_off_loop(target.arguments_schema, arguments)

    job_id = uuid.uuid4()
    limit = settings.max_active_jobs_per_user
    queued = await repo.queue_job_within_limit(
        transaction,
        job_id=job_id,
        program_id=target.id,
        author_id=user.user_id,
        arguments=arguments_text,
        config=config,
        limit=limit,
    )
    if not queued:
        raise TooManyRequests(f"You already have {limit} active jobs (queued, pending or running); wait for one.")
    transaction.after_commit.append(wake)
    return RunOut(id=job_id, status=JobStatus.QUEUED)


async def validate_arguments(
    session: AsyncSession,
    *,
    user: Principal,
    title: str,
    provider: str | None,
    arguments: dict[str, Any] | str | None,
    max_arguments_bytes: int,
) -> ValidateArgumentsOut:
    """Check arguments against the program's schema without creating a job."""
    provider, title = split_title(title, provider)
    _, decoded = parse_arguments(arguments, max_bytes=max_arguments_bytes)
    row = await repo.find_visible(session, user.user_id, title=title, provider=provider)
    if row is None:
        raise _not_found(title, provider)
    await check_arguments_off_loop(row.program.arguments_schema, decoded)
    return ValidateArgumentsOut(**program_out(row).model_dump(), valid=True)


async def grant_program(session: AsyncSession, *, title: str, provider: str, group: str, level: str) -> Program:
    """Let `group` view or run the provider's program `title` (what `serverless-gateway program grant` does)."""
    try:
        access = AccessLevel(level.lower())
    except ValueError:
        raise BadRequest(f"access level must be 'view' or 'run', not {level!r}") from None
    found_provider = await accounts.require_provider(session, provider)
    found_group = await accounts.require_group(session, group)
    program = await repo.get_provider_program(session, provider_id=found_provider.id, title=title)
    if program is None:
        raise NotFound(f"provider {provider!r} has no program {title!r}")
    await repo.grant_access(session, program.id, found_group.id, access.value)
    return program
