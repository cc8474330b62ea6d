"""Program artifacts: checked as tar archives without extracting, stored once per sha256, unpacked safely."""

from __future__ import annotations

import asyncio
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..config import Settings
from ..errors import BadRequest, ServiceUnavailable
from ..storage import Storage, StorageError

READ_CHUNK = 1024 * 1024
ARTIFACT_PREFIX = "artifacts/"


def _is_corrupt_data(exc: BaseException) -> bool:
    """Errors tarfile and its decompressors raise on data that is not a whole archive (not disk errors)."""
    if isinstance(exc, (EOFError, zlib.error, lzma.LZMAError, tarfile.TarError)):
        return True
    return isinstance(exc, OSError) and exc.errno is None


class ArtifactRejected(BadRequest):
    """The artifact is not a tar archive we accept; the message names the offending member."""


@dataclass(frozen=True, slots=True)
class ArtifactLimits:
    max_members: int
    max_unpacked_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactLimits:
        return cls(max_members=settings.artifact_max_members, max_unpacked_bytes=settings.artifact_max_unpacked_bytes)


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    sha256: str
    size: int
    members: int
    unpacked_bytes: int

    @property
    def key(self) -> str:
        return artifact_key(self.sha256)


def artifact_key(sha256: str) -> str:
    """Artifacts are content-addressed: one object per distinct archive."""
    return f"{ARTIFACT_PREFIX}{sha256}.tar"


def safe_relative_path(path: str) -> str | None:
    """`path` normalised to `a/b` form ("" for the root), or None when absolute or climbing out with `..`."""
    if "\x00" in path or _is_absolute(path):
        return None
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def check_entrypoint(entrypoint: str) -> str:
    """The entrypoint as a normalised relative file path, or 400."""
    normalised = safe_relative_path(entrypoint)
    if not normalised or len(entrypoint) > 255 or entrypoint.endswith("/"):
        raise BadRequest(f"entrypoint {entrypoint!r} must be a relative file path inside the artifact")
    return normalised


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":" and path[0].isalpha())


def _reject(member: tarfile.TarInfo, why: str) -> ArtifactRejected:
    return ArtifactRejected(f"unsafe member {member.name!r} in the artifact: {why}")


def _check_member(member: tarfile.TarInfo) -> str:
    """The member's normalised name; raises when the member could escape the root or is not plain data."""
    if _is_absolute(member.name):
        raise _reject(member, "absolute path")
    name = safe_relative_path(member.name)
    if name is None:
        raise _reject(member, "path contains '..'")
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        target = member.linkname
        if _is_absolute(target):
            raise _reject(member, f"{kind} to an absolute path ({target!r})")
        # A symlink resolves from its own directory, a hard link from the archive root.
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise _reject(member, f"{kind} pointing outside the archive ({target!r})")
        if not name:
            raise _reject(member, f"{kind} as the archive root")
    elif member.ischr() or member.isblk():
        raise _reject(member, "device file")
    elif member.isfifo():
        raise _reject(member, "FIFO")
    elif not (member.isfile() or member.isdir()):
        raise _reject(member, "unsupported member type")
    return name


def inspect_archive(fileobj: BinaryIO, *, entrypoint: str, limits: ArtifactLimits) -> ArtifactInfo:
    """Hash the archive and check every member header, without extracting anything (blocking: run in a thread)."""
    wanted = check_entrypoint(entrypoint)
    fileobj.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := fileobj.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    fileobj.seek(0)
    members = 0
    unpacked = 0
    found = False
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as archive:
            while (member := archive.next()) is not None:
                members += 1
                if members > limits.max_members:
                    raise ArtifactRejected(f"the artifact has more than {limits.max_members} members")
                name = _check_member(member)
                if member.isfile():
                    unpacked += member.size
                    if unpacked > limits.max_unpacked_bytes:
                        raise ArtifactRejected(
                            f"the artifact unpacks to more than {limits.max_unpacked_bytes} bytes "
                            f"(at member {member.name!r})"
                        )
                if name == wanted and (member.isfile() or member.issym() or member.islnk()):
                    found = True
                cast(Any, archive).members.clear()  # keep memory flat on archives with many members
    except ArtifactRejected:
        raise
    except Exception as exc:
        if not _is_corrupt_data(exc):
            raise
        if members == 0 and isinstance(exc, tarfile.ReadError):
            raise ArtifactRejected("artifact is not a tar archive") from None
        raise ArtifactRejected(f"artifact is not a valid tar archive: {exc or type(exc).__name__}") from None
    finally:
        fileobj.seek(0)
    if not found:
        raise ArtifactRejected(f"entrypoint {entrypoint!r} not found in the artifact")
    return ArtifactInfo(sha256=digest.hexdigest(), size=size, members=members, unpacked_bytes=unpacked)


async def check_artifact(fileobj: BinaryIO, *, entrypoint: str, limits: ArtifactLimits) -> ArtifactInfo:
    """`inspect_archive` off the event loop."""
    return await asyncio.to_thread(inspect_archive, fileobj, entrypoint=entrypoint, limits=limits)


async def _chunks(fileobj: BinaryIO) -> AsyncIterator[bytes]:
    fileobj.seek(0)
    while chunk := await asyncio.to_thread(fileobj.read, READ_CHUNK):
        yield chunk


async def store_artifact(storage: Storage, fileobj: BinaryIO, info: ArtifactInfo) -> str:
    """Put the checked archive under its content address, unless an identical one is stored already."""
    key = info.key
    try:
        if not await storage.exists(key):
            await storage.put_stream(key, _chunks(fileobj), max_bytes=info.size)
    except StorageError as exc:
        raise ServiceUnavailable(f"storage is unavailable: {exc}") from None
    return key


def _extract(archive: Path | bytes, dest_dir: Path) -> None:
    if dest_dir.is_dir():
        return
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
    try:
        opened = (
            tarfile.open(fileobj=io.BytesIO(archive), mode="r:*")
            if isinstance(archive, bytes)
            else tarfile.open(archive, mode="r:*")
        )
        with opened as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.rename(tmp, dest_dir)
        except OSError:
            if not dest_dir.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another task unpacked the same archive first
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and _is_corrupt_data(exc):
            raise ArtifactRejected(f"cannot unpack the artifact: {exc or type(exc).__name__}") from None
        raise


async def unpack_artifact(archive: Path | bytes, dest_dir: Path) -> Path:
    """Extract an archive (a file path or its bytes) into `dest_dir`, once: an existing `dest_dir` is kept as is.

    Extraction uses tarfile's `data` filter, so even an archive that skipped `inspect_archive` cannot write
    outside `dest_dir`, create devices or links that leave it. The directory appears atomically (rename).
    """
    await asyncio.to_thread(_extract, archive, dest_dir)
    return dest_dir
