"""Local directories a submission needs: each program artifact unpacked once, and a small per-job launcher package.

The engine zips the artifact's directory with the launcher package inside it and uploads that to each cluster
once (a content-addressed package), so the workers need not share a filesystem with the gateway. The unpacked
artifact is shared by every job of that artifact and never changed; the launcher package is the same for every
job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
from pathlib import Path

from ..services.artifacts import ArtifactLimits, is_real_dir, safe_relative_path, unpack_artifact
from ..storage.base import Storage

LAUNCHER_PACKAGE = "serverless_gateway_job"
LAUNCHER_FILES = {
    "__main__.py": Path(__file__).with_name("launcher.py"),
    "launcher_http.py": Path(__file__).with_name("launcher_http.py"),
    "launcher_data.py": Path(__file__).with_name("launcher_data.py"),
}
"""The launcher package's files (name in the package -> source): standard library only, relative imports."""


def launcher_sources() -> dict[str, bytes]:
    return {name: source.read_bytes() for name, source in LAUNCHER_FILES.items()}


class Workdirs:
    """`<root>/programs-v2/<sha256>/` per artifact and `<root>/launcher/<sha256>/<package>/` for every job.

    (`programs/` held artifacts unpacked before symlinks to directories were refused: they are not reused.)
    """

    def __init__(self, root: Path, storage: Storage, *, limits: ArtifactLimits | None = None):
        self.root = root.resolve()
        self.storage = storage
        self.limits = limits
        self._locks: dict[str, asyncio.Lock] = {}
        self._launcher_dir: Path | None = None
        # What is known to exist on disk, so the hot path makes no filesystem call for it again.
        self._unpacked: set[str] = set()
        self._files: dict[tuple[str, str], bool] = {}
        self._dirs: set[Path] = set()

    def program_dir_path(self, sha256: str) -> Path:
        return self.root / "programs-v2" / sha256

    async def program_dir(self, *, sha256: str, artifact_key: str) -> Path:
        """The artifact unpacked (once per sha256; atomic, so concurrent dispatchers are safe)."""
        target = self.program_dir_path(sha256)
        if sha256 in self._unpacked:
            return target
        if await asyncio.to_thread(is_real_dir, target):
            self._unpacked.add(sha256)
            return target
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            if await asyncio.to_thread(is_real_dir, target):
                return target
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            archive = await self._download(artifact_key, target.parent)
            try:
                await unpack_artifact(archive, target, limits=self.limits)
            finally:
                await asyncio.to_thread(archive.unlink, True)
        self._locks.pop(sha256, None)
        self._unpacked.add(sha256)
        return target

    def forget(self, sha256: str) -> None:
        """The artifact's directory was removed (garbage collection): unpack it again when next needed."""
        self._unpacked.discard(sha256)
        self._files = {key: found for key, found in self._files.items() if key[0] != sha256}

    async def has_file(self, sha256: str, relative: str) -> bool:
        """Whether the unpacked artifact holds this regular file (remembered: artifacts never change).

        Checked with one `lstat` per path part, never following a directory symlink: a file symlink counts
        when it points, from its own directory, straight at a regular file of the tree.
        """
        key = (sha256, relative)
        if key not in self._files:
            self._files[key] = await asyncio.to_thread(regular_file_inside, self.program_dir_path(sha256), relative)
        return self._files[key]

    async def ensure_dir(self, path: Path) -> None:
        if path not in self._dirs:
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
            self._dirs.add(path)

    async def _download(self, key: str, directory: Path) -> Path:
        fd, name = await asyncio.to_thread(tempfile.mkstemp, ".tar", ".download-", str(directory))
        path = Path(name)
        handle = os.fdopen(fd, "wb")
        try:
            async for chunk in self.storage.open_stream(key):
                await asyncio.to_thread(handle.write, chunk)
        except BaseException:
            handle.close()
            path.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(handle.close)
        return path

    async def launcher_package(self) -> Path:
        """`<root>/launcher/<sha256>/<package>/`: the launcher (`__main__.py`, its modules), the same for every job.

        It travels inside each program's working-dir package (`RayJobs.submit(bundle=...)`), uploaded once per
        cluster, so no job pays for a package of its own; what differs per job reaches the launcher through its
        one-time bootstrap.
        """
        if self._launcher_dir is not None:
            return self._launcher_dir
        sources = await asyncio.to_thread(launcher_sources)
        digest = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in sources.items())).hexdigest()
        digest = digest[:16]
        package = self.root / "launcher" / digest / LAUNCHER_PACKAGE

        def build() -> None:
            if (package / "__main__.py").is_file():
                return
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".launcher-", dir=self.root))
            (staging / LAUNCHER_PACKAGE).mkdir()
            (staging / LAUNCHER_PACKAGE / "__init__.py").write_bytes(b"")
            for name, data in sources.items():
                (staging / LAUNCHER_PACKAGE / name).write_bytes(data)
            package.parent.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staging, package.parent)
            except OSError:  # another dispatcher built it meanwhile
                shutil.rmtree(staging, ignore_errors=True)

        await asyncio.to_thread(build)
        self._launcher_dir = package
        return package


def _lstat_mode(root: Path, relative: str) -> int | None:
    """The `lstat` mode of `root/relative` when every parent on the way is a real directory, else None."""
    parts = relative.split("/")
    path = root
    try:
        for part in parts[:-1]:
            path = path / part
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        return os.lstat(path / parts[-1]).st_mode
    except OSError:
        return None


def regular_file_inside(root: Path, relative: str) -> bool:
    """Whether `relative` names a regular file under `root`, or a symlink to one that stays inside (bounded)."""
    name = safe_relative_path(relative)
    if not name:
        return False
    mode = _lstat_mode(root, name)
    if mode is None or stat.S_ISREG(mode):
        return mode is not None
    if not stat.S_ISLNK(mode):
        return False
    try:
        link = os.readlink(root / name)
    except OSError:
        return False
    # Resolved by name as the archive check does (the tree holds no directory symlinks to make it differ).
    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    if link.startswith("/") or target in (".", "..") or target.startswith("../"):
        return False
    mode = _lstat_mode(root, target)
    return mode is not None and stat.S_ISREG(mode)
