"""Endpoints under /api/v1/files/: a user's files of a function, and `provider/...` for the provider's own files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from ..deps import PrincipalDep, SessionDep, SettingsDep, StateDep, StorageDep
from ..errors import error_responses
from ..schemas.common import Message
from ..schemas.files import FileListOut, FileUploadOut
from ..services import files as service
from .routing import SlashRouter
from .upload_stream import MultipartFileStream

router = SlashRouter(prefix="/files", tags=["files"])

FunctionQuery = Annotated[
    str, Query(min_length=1, max_length=512, description="The function's title (or `provider/title`).")
]
ProviderQuery = Annotated[
    str | None, Query(max_length=150, pattern=r"^[^\x00-\x1f\x7f]*$", description="The function's provider, if any.")
]
FileQuery = Annotated[str, Query(max_length=1024, description="The file's name: one path component.")]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


ScopeResolver = Callable[..., Awaitable[service.FileScope]]
"""`user_scope` or `provider_scope`: the folder the caller may use for a function (404 otherwise)."""


def _disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _add_routes(base: str, resolve: ScopeResolver, *, whose: str, name: str) -> None:
    """The list, download, upload and delete endpoints of one kind of folder, under `base`."""

    async def list_files(
        session: SessionDep,
        storage: StorageDep,
        principal: PrincipalDep,
        function: FunctionQuery,
        provider: ProviderQuery = None,
    ) -> FileListOut:
        scope = await resolve(session, principal=principal, function=function, provider=provider)
        names = await service.list_files(storage, scope)
        return FileListOut(files=names, results=names)

    async def download_file(
        session: SessionDep,
        storage: StorageDep,
        principal: PrincipalDep,
        file: FileQuery,
        function: FunctionQuery,
        provider: ProviderQuery = None,
    ) -> StreamingResponse:
        scope = await resolve(session, principal=principal, function=function, provider=provider)
        download = await service.open_download(storage, scope, file)
        headers = {"Content-Disposition": _disposition(download.name), "Content-Length": str(download.size)}
        return StreamingResponse(download.chunks, media_type="application/octet-stream", headers=headers)

    async def upload_file(
        request: Request,
        state: StateDep,
        session: SessionDep,
        storage: StorageDep,
        settings: SettingsDep,
        principal: PrincipalDep,
        function: FunctionQuery,
        provider: ProviderQuery = None,
    ) -> FileUploadOut:
        scope = await resolve(session, principal=principal, function=function, provider=provider)
        # The access check is done: give the database connection back before a possibly long transfer.
        await session.commit()
        upload = MultipartFileStream(request, field="file")
        filename = service.check_file_name(await upload.open())
        declared = request.headers.get("content-length", "")
        limits = service.FileLimits(
            max_upload_bytes=settings.max_upload_bytes,
            expected_bytes=int(declared) if declared.isdigit() else None,
            max_files_per_function=settings.max_files_per_function,
            max_space_bytes=settings.max_file_bytes_per_user,
        )
        size = await service.upload_file(
            storage, state.file_usage, scope, name=filename, chunks=upload.chunks(), limits=limits
        )
        return FileUploadOut(message=f"File {filename!r} uploaded.", file=filename, size=size)

    async def delete_file(
        state: StateDep,
        session: SessionDep,
        storage: StorageDep,
        principal: PrincipalDep,
        file: FileQuery,
        function: FunctionQuery,
        provider: ProviderQuery = None,
    ) -> Message:
        scope = await resolve(session, principal=principal, function=function, provider=provider)
        await service.delete_file(storage, state.file_usage, scope, file)
        return Message(message=f"File {file!r} deleted.")

    router.add_api_route(
        f"{base}/",
        list_files,
        methods=["GET"],
        name=f"{name}_list_root",
        response_model=FileListOut,
        summary=f"List {whose} files of a function",
        responses=error_responses(400, 401, 404, 503),
    )
    router.add_api_route(
        f"{base}/list/",
        list_files,
        methods=["GET"],
        name=f"{name}_list",
        response_model=FileListOut,
        summary=f"List {whose} files of a function",
        responses=error_responses(400, 401, 404, 503),
    )
    router.add_api_route(
        f"{base}/download/",
        download_file,
        methods=["GET"],
        name=f"{name}_download",
        response_class=StreamingResponse,
        summary=f"Download one of {whose} files of a function (streamed)",
        responses={
            200: {"description": "The file's bytes.", "content": {"application/octet-stream": {}}},
            **error_responses(400, 401, 404, 503),
        },
    )
    router.add_api_route(
        f"{base}/upload/",
        upload_file,
        methods=["POST"],
        name=f"{name}_upload",
        response_model=FileUploadOut,
        summary=f"Upload (or replace) one of {whose} files of a function: multipart field `file`",
        responses=error_responses(400, 401, 404, 413, 429, 503),
        openapi_extra=_UPLOAD_BODY,
    )
    router.add_api_route(
        f"{base}/delete/",
        delete_file,
        methods=["DELETE"],
        name=f"{name}_delete",
        response_model=Message,
        summary=f"Delete one of {whose} files of a function",
        responses=error_responses(400, 401, 404, 503),
    )


# The provider routes come first so that `/files/provider/...` never reads as a user route.
_add_routes("/provider", service.provider_scope, whose="the provider's", name="provider_files")
_add_routes("", service.user_scope, whose="your", name="files")
