"""User and provider files of a function: who may reach which folder, safe names, and the storage calls."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Principal
from ..errors import ErrorDetail, NotFound, PayloadTooLarge, TooManyRequests, ValidationFailed
from ..repositories import accounts as accounts_repo
from ..repositories import jobs as jobs_repo
from ..repositories import programs as programs_repo
from ..repositories.access import is_provider_admin
from ..storage import Storage
from ..storage.base import ObjectNotFound, ObjectTooLarge
from ..storage.usage import SpaceUsage
from .program_inputs import split_title

MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class FileScope:
    """One folder of files: a user's (or a provider's) files of one function, inside its owner's file space."""

    prefix: str
    function: str
    provider: str | None
    space: str
    """The owner's whole file space (all functions), which the byte quota covers."""

    def key(self, name: str) -> str:
        return self.prefix + name


def _bad_name(message: str) -> ValidationFailed:
    return ValidationFailed(f"Invalid request: file: {message}", [ErrorDetail(loc=["query", "file"], msg=message)])


def check_file_name(name: str) -> str:
    """A file name is exactly one safe path component; anything else answers 400."""
    if name in ("", ".", ".."):
        raise _bad_name("a file name cannot be empty, '.' or '..'")
    if "/" in name or "\\" in name:
        raise _bad_name("a file name cannot hold '/' or '\\'")
    if _CONTROL.search(name):
        raise _bad_name("a file name cannot hold NUL or control characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad_name("a file name must be valid Unicode text") from None
    if size > MAX_NAME_BYTES:
        raise _bad_name(f"a file name is at most {MAX_NAME_BYTES} bytes long")
    return name


def key_part(text: str) -> str:
    """A storage key component naming `text`: itself when safe, else percent-encoded (or hashed when very long)."""
    if text not in (".", "..") and "%" not in text and "\\" not in text and len(text.encode("utf-8")) <= 200:
        return text
    encoded = quote(text, safe="").replace(".", "%2E") if text in (".", "..") else quote(text, safe="")
    if len(encoded) > 200:
        return "%%sha256-" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return encoded


def user_files_space(user_id: object) -> str:
    """Where all of a user's files live."""
    return f"files/users/{user_id}/"


def user_files_prefix(user_id: object, provider: str | None, title: str) -> str:
    """Where a user's files of a function live: `files/users/<user id>/<provider or _>/<function>/`."""
    return f"{user_files_space(user_id)}{provider or '_'}/{key_part(title)}/"


def provider_files_space(provider: str) -> str:
    """Where all of a provider's own files live."""
    return f"files/providers/{provider}/"


def provider_files_prefix(provider: str, title: str) -> str:
    """Where a provider's own files of its function live: `files/providers/<provider>/<function>/`."""
    return f"{provider_files_space(provider)}{key_part(title)}/"


def _function_not_found(title: str, provider: str | None) -> NotFound:
    name = f"{provider}/{title}" if provider else title
    return NotFound(f"Function {name!r} not found.")


async def _visible_function(
    session: AsyncSession, principal: Principal, function: str, provider: str | None
) -> tuple[str | None, str]:
    """(provider, title) of a function the caller may see; a job token reaches only its own job's function."""
    provider, title = split_title(function, provider)
    row = await programs_repo.find_visible(session, principal.user_id, title=title, provider=provider)
    if row is None:
        raise _function_not_found(title, provider)
    if principal.job_id is not None:
        if await jobs_repo.program_of_job(session, job_id=principal.job_id) != row.program.id:
            raise _function_not_found(title, provider)
    return provider, title


async def user_scope(session: AsyncSession, *, principal: Principal, function: str, provider: str | None) -> FileScope:
    """The caller's own files of a function it may see."""
    provider, title = await _visible_function(session, principal, function, provider or None)
    return FileScope(
        prefix=user_files_prefix(principal.user_id, provider, title),
        function=title,
        provider=provider,
        space=user_files_space(principal.user_id),
    )


async def provider_scope(
    session: AsyncSession, *, principal: Principal, function: str, provider: str | None
) -> FileScope:
    """The provider's own files of one of its functions, for the provider's admins only (others: 404)."""
    provider, title = split_title(function, provider or None)
    if provider is None:
        raise ValidationFailed(
            "Invalid request: provider: Field required",
            [ErrorDetail(loc=["query", "provider"], msg="Field required")],
        )
    found = await accounts_repo.get_provider_by_name(session, provider)
    if found is None or not await is_provider_admin(session, principal.user_id, found.id):
        raise NotFound(f"Provider {provider!r} not found, or you are not one of its admins.")
    await _visible_function(session, principal, title, provider)
    return FileScope(
        prefix=provider_files_prefix(provider, title),
        function=title,
        provider=provider,
        space=provider_files_space(provider),
    )


async def list_files(storage: Storage, scope: FileScope) -> list[str]:
    objects = await storage.list(scope.prefix)
    return sorted(info.key for info in objects if "/" not in info.key)


@dataclass(frozen=True, slots=True)
class Download:
    name: str
    size: int
    chunks: AsyncIterator[bytes]


async def open_download(storage: Storage, scope: FileScope, name: str) -> Download:
    """The file's size and its bytes; 404 is decided here, before any byte of the answer is sent."""
    key = scope.key(check_file_name(name))
    try:
        info = await storage.stat(key)
        if info is None:
            raise NotFound(f"File {name!r} not found.")
        stream = storage.open_stream(key)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
    except ObjectNotFound:
        raise NotFound(f"File {name!r} not found.") from None

    async def chunks() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in stream:
            yield chunk

    return Download(name=name, size=info.size, chunks=chunks())


@dataclass(frozen=True, slots=True)
class FileLimits:
    """The upload size limit and the quotas an upload must stay within."""

    max_upload_bytes: int
    max_files_per_function: int
    max_space_bytes: int
    expected_bytes: int | None = None
    """The request's declared length, when known: the file is no larger, so no more of the quota is held."""

    @property
    def most_bytes(self) -> int:
        if self.expected_bytes is None:
            return self.max_upload_bytes
        return min(self.max_upload_bytes, self.expected_bytes)


def _check_file_count(scope: FileScope, in_folder: dict[str, int], name: str, limits: FileLimits) -> None:
    if name not in in_folder and len(in_folder) >= limits.max_files_per_function:
        raise TooManyRequests(
            f"The function {scope.function!r} already has {len(in_folder)} files, the limit is "
            f"{limits.max_files_per_function}; delete some first."
        )


def _space_full(quota: int, used: int) -> str:
    return f"The upload would pass the file quota of {quota} bytes ({used} bytes are used); delete some files first."


async def upload_file(
    storage: Storage,
    usage: SpaceUsage,
    scope: FileScope,
    *,
    name: str,
    chunks: AsyncIterable[bytes],
    limits: FileLimits,
) -> int:
    """Store (or replace) a file; 413 past the upload limit, 429 past a quota, and then nothing is kept."""
    key = scope.key(check_file_name(name))
    in_folder = {info.key: info.size for info in await storage.list(scope.prefix) if "/" not in info.key}
    _check_file_count(scope, in_folder, name, limits)
    freed = in_folder.get(name, 0)
    held, used = await usage.reserve(
        storage, scope.space, quota=limits.max_space_bytes, freed=freed, upto=limits.most_bytes
    )
    if held <= 0:
        raise TooManyRequests(_space_full(limits.max_space_bytes, used))
    stored: int | None = None
    try:
        stored = await storage.put_stream(key, chunks, max_bytes=held)
        return stored
    except ObjectTooLarge:
        if held < limits.most_bytes:
            raise TooManyRequests(_space_full(limits.max_space_bytes, used)) from None
        raise PayloadTooLarge(f"The file is larger than the limit of {limits.max_upload_bytes} bytes.") from None
    finally:
        usage.settle(scope.space, held=held, stored=stored, freed=freed)


async def delete_file(storage: Storage, usage: SpaceUsage, scope: FileScope, name: str) -> None:
    key = scope.key(check_file_name(name))
    try:
        deleted = await storage.delete(key)
    finally:
        usage.changed(scope.space)
    if not deleted:
        raise NotFound(f"File {name!r} not found.")
