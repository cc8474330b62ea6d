"""Endpoints under /api/v1/programs/: list, get by title, upload, run, validate arguments."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import File, Form, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from ..deps import SessionDep, SettingsDep, StateDep, StorageDep, UserDep
from ..errors import PayloadTooLarge, error_responses
from ..schemas.programs import (
    ProgramFilter,
    ProgramOut,
    RunOut,
    RunRequest,
    ValidateArgumentsOut,
    ValidateArgumentsRequest,
)
from ..services import programs as service
from ..services.program_inputs import PROVIDER_PATTERN
from .routing import SlashRouter

router = SlashRouter(prefix="/programs", tags=["programs"])

FORM_OVERHEAD_BYTES = 1024 * 1024
"""Room for the form fields and multipart framing beside the artifact itself."""


class UploadSizeLimitRoute(APIRoute):
    """Refuses an upload whose body exceeds the artifact limit: by Content-Length first, else while reading."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            limit = request.app.state.gateway.settings.max_artifact_bytes
            message = f"The artifact is larger than the limit of {limit} bytes."
            body_limit = limit + FORM_OVERHEAD_BYTES
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > body_limit:
                raise PayloadTooLarge(message)
            received = 0
            receive = request.receive

            async def counting_receive() -> Message:
                nonlocal received
                chunk = await receive()
                if chunk["type"] == "http.request":
                    received += len(chunk.get("body", b""))
                    if received > body_limit:
                        # An HTTPException is the one error FastAPI lets through its body parsing unchanged.
                        raise StarletteHTTPException(413, message)
                return chunk

            return await handler(Request(request.scope, counting_receive))

        return limited


@router.get(
    "/",
    response_model=list[ProgramOut],
    summary="List the programs you may see",
    responses=error_responses(400, 401, 403),
)
async def list_programs(
    session: SessionDep,
    user: UserDep,
    filter: Annotated[
        ProgramFilter | None,
        Query(description="`serverless`: your own programs; `catalog`: provider programs."),
    ] = None,
    provider: Annotated[
        str | None, Query(pattern=PROVIDER_PATTERN, description="Only this provider's programs.")
    ] = None,
) -> list[ProgramOut]:
    return await service.list_programs(session, user=user, kind=filter, provider=provider)


@router.get(
    "/get_by_title/{title:path}/",
    response_model=ProgramOut,
    summary="Get a program by its title (`title`, or `provider/title`)",
    responses=error_responses(400, 401, 403, 404),
)
async def get_by_title(
    session: SessionDep,
    user: UserDep,
    title: str,
    provider: Annotated[str | None, Query(max_length=150, description="The program's provider, if any.")] = None,
) -> ProgramOut:
    return await service.get_program(session, user=user, title=title.rstrip("/"), provider=provider)


async def upload(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    user: UserDep,
    title: Annotated[str, Form(description="Program title, or `provider/title`.")],
    entrypoint: Annotated[
        str | None, Form(description="Path of the script to run, inside the artifact (required).")
    ] = None,
    artifact: Annotated[
        UploadFile | None, File(description="A tar archive (plain or gzip) holding the entrypoint (required).")
    ] = None,
    dependencies: Annotated[
        list[str] | None,
        Form(description='PEP 508 requirements: one JSON list string (`["qiskit>=1"]`) or repeated fields.'),
    ] = None,
    env_vars: Annotated[str | None, Form(description="A JSON object of environment variables.")] = None,
    description: Annotated[str | None, Form()] = None,
    version: Annotated[str | None, Form()] = None,
    type: Annotated[str | None, Form(description="GENERIC, APPLICATION or CIRCUIT.")] = None,
    provider: Annotated[str | None, Form(description="Provider name; you must be one of its admins.")] = None,
    arguments_schema: Annotated[
        str | None, Form(description="A JSON Schema for the run arguments; `{}` removes it.")
    ] = None,
    image: Annotated[str | None, Form(description="Not supported: answers 400.")] = None,
) -> ProgramOut:
    limit = settings.max_artifact_bytes
    if artifact is not None and artifact.size is not None and artifact.size > limit:
        raise PayloadTooLarge(f"The artifact is larger than the limit of {limit} bytes.")
    fields = service.UploadFields(
        title=title,
        entrypoint=entrypoint,
        image=image,
        provider=provider,
        dependencies=dependencies,
        env_vars=env_vars,
        description=description,
        version=version,
        type=type,
        arguments_schema=arguments_schema,
    )
    return await service.upload_program(
        session,
        storage=storage,
        settings=settings,
        user=user,
        fields=fields,
        artifact=artifact.file if artifact is not None else None,
    )


router.add_api_route(
    "/upload/",
    upload,
    methods=["POST"],
    response_model=ProgramOut,
    summary="Upload a program: creates it, or updates the one with the same title (keeping its id)",
    responses=error_responses(400, 401, 403, 404, 413, 503),
    route_class_override=UploadSizeLimitRoute,
)


@router.post(
    "/run/",
    response_model=RunOut,
    summary="Run a program: queues a job",
    responses=error_responses(400, 401, 403, 404, 423, 429),
)
async def run(
    state: StateDep,
    session: SessionDep,
    settings: SettingsDep,
    user: UserDep,
    body: RunRequest,
) -> RunOut:
    return await service.run_program(session, settings=settings, user=user, request=body, wake=state.wake_dispatcher)


@router.post(
    "/validate_arguments/",
    response_model=ValidateArgumentsOut,
    summary="Check arguments against a program's schema without running it",
    responses=error_responses(400, 401, 403, 404),
)
async def validate_arguments(
    session: SessionDep, user: UserDep, body: ValidateArgumentsRequest
) -> ValidateArgumentsOut:
    return await service.validate_arguments(
        session, user=user, title=body.title, provider=body.provider, arguments=body.arguments
    )
