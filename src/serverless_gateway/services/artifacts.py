"""Program artifacts: checked as tar archives without extracting, stored once per sha256, unpacked safely."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..config import Settings
from ..errors import BadRequest
from ..storage import Storage
from .tar_stream import ArtifactRejected as ArtifactRejected
from .tar_stream import open_tar_stream

READ_CHUNK = 1024 * 1024
ARTIFACT_PREFIX = "artifacts/"
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
# tarfile reads ahead of the member it parses; the exact limit is checked at each member's end.
READ_AHEAD_ALLOWANCE = 1024 * 1024
_FILE, _DIR, _SYMLINK, _HARDLINK = "file", "directory", "symlink", "hard link"
_REGULAR = (_FILE, _HARDLINK)


def _is_corrupt_data(exc: BaseException) -> bool:
    """Errors tarfile and its decompressors raise on data that is not a whole archive (not disk errors)."""
    if isinstance(exc, (EOFError, zlib.error, lzma.LZMAError, tarfile.TarError)):
        return True
    return isinstance(exc, OSError) and exc.errno is None


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


def _check_path(member: tarfile.TarInfo, path: str, what: str) -> None:
    if len(path.encode("utf-8", errors="surrogateescape")) > MAX_PATH_BYTES:
        raise _reject(member, f"{what} longer than {MAX_PATH_BYTES} bytes")
    if any(len(part.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES for part in path.split("/")):
        raise _reject(member, f"{what} has a part longer than {MAX_NAME_BYTES} bytes")


def _check_member(member: tarfile.TarInfo) -> str:
    """The member's normalised name; raises when the member could escape the root or is not plain data."""
    _check_path(member, member.name, "name")
    if _is_absolute(member.name):
        raise _reject(member, "absolute path")
    name = safe_relative_path(member.name)
    if name is None:
        raise _reject(member, "path contains '..'")
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        target = member.linkname
        _check_path(member, target, f"{kind} target")
        if _is_absolute(target):
            raise _reject(member, f"{kind} to an absolute path ({target!r})")
        resolved = _link_target(member, name)
        if resolved == ".." or resolved.startswith("../"):
            raise _reject(member, f"{kind} pointing outside the archive ({target!r})")
    elif member.ischr() or member.isblk():
        raise _reject(member, "device file")
    elif member.isfifo():
        raise _reject(member, "FIFO")
    elif not (member.isfile() or member.isdir()):
        raise _reject(member, "unsupported member type")
    if not name and not member.isdir():
        raise _reject(member, "only a directory may be the archive root")
    return name


def _link_target(member: tarfile.TarInfo, name: str) -> str:
    """Where a link points, as a member name: a symlink resolves from its own directory, a hard link from the root."""
    base = posixpath.dirname(name) if member.issym() else ""
    return posixpath.normpath(posixpath.join(base, member.linkname))


class _Tree:
    """What the members seen so far make on disk, to refuse links and names that could not unpack safely.

    Symlinks may only point to regular files of the archive (never to a directory, another symlink or
    outside), so nothing that walks the unpacked tree can loop or leave it; hard links only to regular files
    that came earlier (what tar itself can extract); a name keeps one kind; nothing sits inside a non-directory.
    """

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.symlinks: list[tuple[tarfile.TarInfo, str]] = []

    def add(self, member: tarfile.TarInfo) -> str:
        name = _check_member(member)
        kind = _DIR if member.isdir() else _SYMLINK if member.issym() else _HARDLINK if member.islnk() else _FILE
        if kind == _HARDLINK and self.kinds.get(_link_target(member, name)) not in _REGULAR:
            why = f"hard link to {member.linkname!r}, which is not a regular file earlier in the archive"
            raise _reject(member, why)
        if kind == _SYMLINK:
            self.symlinks.append((member, _link_target(member, name)))
        previous = self.kinds.get(name)
        if previous is not None and (previous != kind or kind not in (_FILE, _DIR)):
            raise _reject(member, f"appears twice in the archive (as a {previous}, then as a {kind})")
        if name:
            self.kinds[name] = kind
        return name

    def finish(self) -> None:
        """The checks that need the whole archive: symlink targets and members inside non-directories."""
        for member, target in self.symlinks:
            if self.kinds.get(target) not in _REGULAR:
                raise _reject(
                    member,
                    f"symlink to {member.linkname!r}, which is not a regular file of the archive "
                    "(symlinks to directories or to other symlinks are refused)",
                )
        names = sorted(self.kinds)
        for name, kind in self.kinds.items():
            if kind == _DIR:
                continue
            inside = bisect.bisect_left(names, name + "/")
            if inside < len(names) and names[inside].startswith(name + "/"):
                raise ArtifactRejected(
                    f"unsafe member {names[inside]!r} in the artifact: inside {name!r}, which is a {kind}"
                )


def _scan(fileobj: BinaryIO, *, wanted: str | None, limits: ArtifactLimits) -> tuple[int, int, bool]:
    """One forward pass over every member header: (members, bytes of regular files, entrypoint found)."""
    members = 0
    unpacked = 0
    found = False
    tree = _Tree()
    try:
        with open_tar_stream(fileobj, max_bytes=limits.max_unpacked_bytes + READ_AHEAD_ALLOWANCE) as archive:
            while (member := archive.next()) is not None:
                members += 1
                if members > limits.max_members:
                    raise ArtifactRejected(f"the artifact has more than {limits.max_members} members")
                name = tree.add(member)
                if member.isfile():
                    unpacked += member.size
                    if unpacked > limits.max_unpacked_bytes:
                        raise ArtifactRejected(
                            f"the artifact unpacks to more than {limits.max_unpacked_bytes} bytes "
                            f"(at member {member.name!r})"
                        )
                if archive.offset > limits.max_unpacked_bytes:  # headers and padding count too
                    raise ArtifactRejected(
                        f"the artifact unpacks to more than {limits.max_unpacked_bytes} bytes (headers included)"
                    )
                if name == wanted and not member.isdir():
                    found = True
                cast(Any, archive).members.clear()  # keep memory flat on archives with many members
        tree.finish()
    except ArtifactRejected:
        raise
    except Exception as exc:
        if not _is_corrupt_data(exc):
            raise
        if members == 0 and isinstance(exc, tarfile.ReadError):
            raise ArtifactRejected("artifact is not a tar archive") from None
        raise ArtifactRejected(f"artifact is not a valid tar archive: {exc or type(exc).__name__}") from None
    return members, unpacked, found


def inspect_archive(fileobj: BinaryIO, *, entrypoint: str, limits: ArtifactLimits) -> ArtifactInfo:
    """Hash the archive and check every member header, without extracting anything (blocking: run in a thread)."""
    wanted = check_entrypoint(entrypoint)
    fileobj.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := fileobj.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    try:
        members, unpacked, found = _scan(fileobj, wanted=wanted, limits=limits)
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
    if not await storage.exists(key):
        await storage.put_stream(key, _chunks(fileobj), max_bytes=info.size)
    return key


def is_real_dir(path: Path) -> bool:
    """Whether `path` is a directory itself, not a symlink to one (one `lstat`)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _open_archive(archive: Path | bytes) -> BinaryIO:
    return io.BytesIO(archive) if isinstance(archive, bytes) else archive.open("rb")


def _extract(archive: Path | bytes, dest_dir: Path, limits: ArtifactLimits) -> None:
    if is_real_dir(dest_dir):
        return
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    with _open_archive(archive) as fileobj:
        try:
            _scan(fileobj, wanted=None, limits=limits)
        except ArtifactRejected as exc:
            raise ArtifactRejected(f"cannot unpack the artifact: {exc.message}") from None
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
        try:
            with open_tar_stream(fileobj, max_bytes=limits.max_unpacked_bytes + READ_AHEAD_ALLOWANCE) as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, dest_dir)
            except OSError:
                if not is_real_dir(dest_dir):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another task unpacked the same archive first
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, ArtifactRejected):
                raise ArtifactRejected(f"cannot unpack the artifact: {exc.message}") from None
            if isinstance(exc, Exception) and _is_corrupt_data(exc):
                raise ArtifactRejected(f"cannot unpack the artifact: {exc or type(exc).__name__}") from None
            raise


async def unpack_artifact(archive: Path | bytes, dest_dir: Path, *, limits: ArtifactLimits | None = None) -> Path:
    """Extract an archive (a file path or its bytes) into `dest_dir`, once: an existing `dest_dir` is kept as is.

    The archive is checked again as at upload (archives stored before a rule existed meet it here), within
    `limits` (default: the default settings'), then extracted with tarfile's `data` filter, so nothing can
    land outside `dest_dir`. The directory appears atomically (rename).
    """
    await asyncio.to_thread(_extract, archive, dest_dir, limits or ArtifactLimits.from_settings(Settings()))
    return dest_dir
