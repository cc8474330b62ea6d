"""The storage protocol every backend implements; keys are `/`-separated relative paths."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

CHUNK_SIZE = 1024 * 1024
MAX_KEY_LENGTH = 1024
RESERVED_TOP_LEVEL = ".tmp"


class StorageError(Exception):
    """A storage operation failed for a reason other than a missing object."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached right now; retrying later may work."""


class ObjectNotFound(StorageError):
    """No object under that key."""


class ObjectTooLarge(StorageError):
    """The stream passed `max_bytes`; nothing was kept."""


class InvalidKey(StorageError):
    """The key is not a clean relative path."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


def check_key(key: str) -> str:
    """Return `key` when it is a clean relative path (`a/b.txt`), else raise InvalidKey; both backends agree."""
    parts = key.split("/")
    if (
        not key
        or len(key) > MAX_KEY_LENGTH
        or any(part in ("", ".", "..") or "\x00" in part or len(part) > 255 for part in parts)
        or parts[0] == RESERVED_TOP_LEVEL
    ):
        raise InvalidKey(f"invalid storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix normalised to end with `/` ("" lists everything)."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    check_key(stripped)
    return stripped + "/"


class Storage(Protocol):
    """A flat key/value store of byte streams."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        """Store the stream under `key` atomically; raise ObjectTooLarge past `max_bytes`. Returns the size.

        Memory stays bounded whatever the size; on any error (or cancellation) nothing new is visible under
        `key` and an object stored there before is kept unchanged.
        """
        ...

    async def put_bytes(self, key: str, data: bytes) -> None: ...

    def open_stream(self, key: str, *, chunk_size: int = CHUNK_SIZE, start: int = 0) -> AsyncIterator[bytes]:
        """Yield the object's bytes from byte `start` on, in chunks; ObjectNotFound on first iteration when missing.

        A `start` at or past the end yields nothing.
        """
        ...

    async def get_bytes(self, key: str) -> bytes: ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def exists(self, key: str) -> bool: ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects directly or indirectly under `prefix` (which ends with `/`), keys relative to it."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the object; False when there was none."""
        ...

    async def check(self) -> None:
        """Raise StorageUnavailable when the backend cannot be used."""
        ...

    async def close(self) -> None: ...
