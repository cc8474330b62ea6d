"""Local directories a submission needs: each program artifact unpacked once, and a small per-job launcher package.

Ray uploads both to the cluster at submission (content-addressed packages), so the workers need not share a
filesystem with the gateway. The unpacked artifact is shared by every job of that artifact and never changed;
what differs per job (the launcher and the arguments file) lives in the per-job package.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..services.artifacts import unpack_artifact
from ..storage.base import Storage

LAUNCHER_PACKAGE = "serverless_gateway_job"
_LAUNCHER_SOURCE = Path(__file__).with_name("launcher.py")


class Workdirs:
    """`<root>/programs/<sha256>/` per artifact and `<root>/jobs/<job id>/<package>/` per submission."""

    def __init__(self, root: Path, storage: Storage):
        self.root = root.resolve()
        self.storage = storage
        self._locks: dict[str, asyncio.Lock] = {}
        self._launcher: bytes | None = None
        # What is known to exist on disk, so the hot path makes no filesystem call for it again.
        self._unpacked: set[str] = set()
        self._files: dict[tuple[str, str], bool] = {}
        self._dirs: set[Path] = set()

    def program_dir_path(self, sha256: str) -> Path:
        return self.root / "programs" / sha256

    async def program_dir(self, *, sha256: str, artifact_key: str) -> Path:
        """The artifact unpacked (once per sha256; atomic, so concurrent dispatchers are safe)."""
        target = self.program_dir_path(sha256)
        if sha256 in self._unpacked:
            return target
        if await asyncio.to_thread(target.is_dir):
            self._unpacked.add(sha256)
            return target
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            if await asyncio.to_thread(target.is_dir):
                return target
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            archive = await self._download(artifact_key, target.parent)
            try:
                await unpack_artifact(archive, target)
            finally:
                await asyncio.to_thread(archive.unlink, True)
        self._locks.pop(sha256, None)
        self._unpacked.add(sha256)
        return target

    async def has_file(self, sha256: str, relative: str) -> bool:
        """Whether the unpacked artifact holds this file (remembered: artifacts never change)."""
        key = (sha256, relative)
        if key not in self._files:
            self._files[key] = await asyncio.to_thread((self.program_dir_path(sha256) / relative).is_file)
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

    async def job_package(self, *, job_id: uuid.UUID, arguments: str) -> Path:
        """A fresh `<package>/` with the launcher as `__main__.py` and the run's arguments as `arguments.json`."""
        if self._launcher is None:
            self._launcher = await asyncio.to_thread(_LAUNCHER_SOURCE.read_bytes)
        package = self.root / "jobs" / str(job_id) / LAUNCHER_PACKAGE
        launcher = self._launcher

        def build() -> None:
            if package.parent.exists():
                shutil.rmtree(package.parent)
            package.mkdir(parents=True)
            (package / "__init__.py").write_bytes(b"")
            (package / "__main__.py").write_bytes(launcher)
            (package / "arguments.json").write_text(arguments, encoding="utf-8")

        await asyncio.to_thread(build)
        return package

    async def remove_job_package(self, job_id: uuid.UUID) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / "jobs" / str(job_id), True)
