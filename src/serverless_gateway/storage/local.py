"""Local-directory storage: each key is a file under the root, written atomically via a temp file."""

from __future__ import annotations

import asyncio
import errno
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from .base import (
    CHUNK_SIZE,
    RESERVED_TOP_LEVEL,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
    check_key,
    check_prefix,
)

# Small incoming chunks are gathered to this size before one write, so a thread hop moves a useful amount.
WRITE_BUFFER = 1024 * 1024
# Temp files this old were left by a crashed process; no upload takes that long.
STALE_TEMP_SECONDS = 24 * 3600

P = ParamSpec("P")
T = TypeVar("T")

_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _os_failure(what: str, exc: OSError) -> StorageError:
    """Disk full, read-only or permission problems are outages (503); the rest are plain errors."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
        return StorageUnavailable(f"local storage: {what}: {reason}")
    return StorageError(f"local storage: {what}: {reason}")


async def _run(what: str, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking file call in a worker thread; its OSError becomes a storage error."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except OSError as exc:
        raise _os_failure(what, exc) from None


class LocalStorage:
    """Files under one root directory; blocking file calls run in worker threads."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._tmp_dir = self.root / RESERVED_TOP_LEVEL

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        target = self._path(key)
        tmp = self._tmp_dir / uuid.uuid4().hex
        what = f"cannot write {key!r}"
        handle = await _run(what, self._open_temp, tmp)
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ObjectTooLarge(f"larger than {max_bytes} bytes")
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_BUFFER:
                    await _run(what, _write_all, handle, pending)
                    pending, pending_size = [], 0
            await _run(what, _write_all, handle, pending)
            pending = []
            await _run(what, _commit, handle, tmp, target)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_discard, handle, tmp))
            raise
        return size

    def _open_temp(self, tmp: Path) -> BinaryIO:
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        return open(tmp, "wb")  # closed by _commit or _discard

    async def put_bytes(self, key: str, data: bytes) -> None:
        async def one() -> AsyncIterator[bytes]:
            yield data

        await self.put_stream(key, one())

    async def open_stream(
        self, key: str, *, chunk_size: int = CHUNK_SIZE, start: int = 0
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except _MISSING:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise _os_failure(f"cannot read {key!r}", exc) from None
        try:
            if start > 0:
                handle.seek(start)
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, chunk_size)
                except OSError as exc:
                    raise _os_failure(f"cannot read {key!r}", exc) from None
                if not chunk:
                    break
                yield chunk
        finally:
            handle.close()

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except _MISSING:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise _os_failure(f"cannot read {key!r}", exc) from None

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        def probe() -> ObjectInfo | None:
            try:
                st = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not path.is_file():
                return None
            return ObjectInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC))

        try:
            return await asyncio.to_thread(probe)
        except OSError as exc:
            raise _os_failure(f"cannot stat {key!r}", exc) from None

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def list(self, prefix: str) -> list[ObjectInfo]:
        normalised = check_prefix(prefix)
        base = self.root.joinpath(*normalised.rstrip("/").split("/")) if normalised else self.root

        def walk() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            if not base.is_dir():
                return found
            for dirpath, dirs, files in os.walk(base):
                if Path(dirpath) == self.root and RESERVED_TOP_LEVEL in dirs:
                    dirs.remove(RESERVED_TOP_LEVEL)
                for name in files:
                    full = Path(dirpath) / name
                    try:
                        st = full.stat()
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    found.append(
                        ObjectInfo(
                            key=full.relative_to(base).as_posix(),
                            size=st.st_size,
                            modified=datetime.fromtimestamp(st.st_mtime, UTC),
                        )
                    )
            found.sort(key=lambda info: info.key)
            return found

        try:
            return await asyncio.to_thread(walk)
        except OSError as exc:
            raise _os_failure(f"cannot list {prefix!r}", exc) from None

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except _MISSING:
            return False
        except OSError as exc:
            raise _os_failure(f"cannot delete {key!r}", exc) from None
        return True

    async def check(self) -> None:
        def probe() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._tmp_dir.mkdir(exist_ok=True)
            if not os.access(self.root, os.W_OK) or not os.access(self._tmp_dir, os.W_OK):
                raise StorageUnavailable(f"storage directory {self.root} is not writable")

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StorageUnavailable(f"storage directory {self.root}: {exc.strerror or exc}") from None

    async def remove_stale_temp_files(self, *, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temp files a crashed process left behind; returns how many."""

        def sweep() -> int:
            removed = 0
            limit = time.time() - older_than
            try:
                entries = list(os.scandir(self._tmp_dir))
            except FileNotFoundError:
                return 0
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
            return removed

        return await asyncio.to_thread(sweep)

    async def close(self) -> None:
        return None


def _write_all(handle: BinaryIO, pieces: list[bytes]) -> None:
    for piece in pieces:
        handle.write(piece)


def _commit(handle: BinaryIO, tmp: Path, target: Path) -> None:
    """Flush to disk, then make the file visible under its key in one rename."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StorageError(f"local storage: a parent of {target.relative_to(tmp.parent.parent)} is an object") from None
    os.replace(tmp, target)


def _discard(handle: BinaryIO, tmp: Path) -> None:
    try:
        handle.close()
    except OSError:
        pass
    tmp.unlink(missing_ok=True)
