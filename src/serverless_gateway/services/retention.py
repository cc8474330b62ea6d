"""Garbage collection: stored artifacts, results and logs no row names any more, and stale unpacked workdirs.

Only what is older than a grace period goes, so an upload or a job that has stored an object but not yet
committed the row naming it keeps it; an upload reusing an existing artifact holds a lock that a collection
waits for (see `repositories.retention`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from ..db import SessionMaker
from ..models import Job, Program
from ..repositories import retention as repo
from ..storage.base import Storage, StorageError

logger = logging.getLogger(__name__)

BATCH = 200
_STORED: tuple[tuple[str, InstrumentedAttribute[str | None]], ...] = (
    ("results/", Job.result_key),
    ("logs/", Job.logs_key),
)


@dataclass
class Collected:
    """What a collection removed (or, in a dry run, would remove)."""

    objects: list[str] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Workdirs:
    """The engine's local directories: `<root>/programs/<sha256>/` and `<root>/jobs/<job id>/`."""

    root: Path
    forget: Callable[[str], None] = lambda _sha256: None
    """Told of every program directory removed, so a running engine does not trust its memory of it."""


async def collect_garbage(
    sessionmaker: SessionMaker,
    storage: Storage,
    *,
    grace: timedelta,
    dry_run: bool = False,
    workdirs: Workdirs | None = None,
    now: datetime | None = None,
) -> Collected:
    """Remove what nothing references and is older than `grace`; returns what went."""
    cutoff = (now or datetime.now(UTC)) - grace
    done = Collected()
    for prefix, column in _STORED:
        old = await _older_than(storage, prefix, cutoff)
        for batch in _batches(old):
            async with sessionmaker() as session:
                kept = await repo.referenced(session, column, batch)
            await _delete_objects(storage, [key for key in batch if key not in kept], dry_run, done)
    # Each batch is decided and removed under the lock, which stalls uploads for one short batch at most.
    for batch in _batches(await _older_than(storage, "artifacts/", cutoff)):
        async with sessionmaker() as session, session.begin():
            if not await _artifacts_collectable(session, done):
                return done
            kept = await repo.referenced(session, Program.artifact_key, batch)
            await _delete_objects(storage, [key for key in batch if key not in kept], dry_run, done)
    if workdirs is not None:
        async with sessionmaker() as session, session.begin():
            if await _artifacts_collectable(session, done):
                await _collect_workdirs(workdirs, await repo.artifact_shas(session), cutoff, dry_run, done)
    return done


async def _artifacts_collectable(session: AsyncSession, done: Collected) -> bool:
    """Take the artifacts lock; False (with a note) while a submission may still need an old artifact."""
    await repo.lock_artifacts(session)
    if await repo.claims_older_than_their_program(session):
        done.notes.append("artifacts kept this time: a job is being submitted from a program changed since")
        return False
    return True


async def _older_than(storage: Storage, prefix: str, cutoff: datetime) -> list[str]:
    """Keys under `prefix` stored before `cutoff` (an object of unknown age is never taken)."""
    listed = await storage.list(prefix)
    return [prefix + info.key for info in listed if info.modified is not None and info.modified < cutoff]


def _batches(keys: list[str]) -> list[list[str]]:
    return [keys[start : start + BATCH] for start in range(0, len(keys), BATCH)]


async def _delete_objects(storage: Storage, keys: list[str], dry_run: bool, done: Collected) -> None:
    for key in keys:
        if not dry_run:
            try:
                if not await storage.delete(key):
                    continue
            except StorageError as exc:
                done.notes.append(f"could not remove {key}: {exc}")
                continue
        done.objects.append(key)


def _stale_dirs(parent: Path, keep: set[str], cutoff: datetime) -> list[Path]:
    if not parent.is_dir():
        return []
    stale = []
    for entry in parent.iterdir():
        if entry.name in keep or not entry.is_dir() or entry.is_symlink():
            continue
        if datetime.fromtimestamp(entry.stat().st_mtime, UTC) < cutoff:
            stale.append(entry)
    return sorted(stale)


async def _collect_workdirs(
    workdirs: Workdirs, used: set[str], cutoff: datetime, dry_run: bool, done: Collected
) -> None:
    """Unpacked artifacts no program uses, and job packages a crash left behind (each lives seconds)."""
    try:
        programs = await asyncio.to_thread(_stale_dirs, workdirs.root / "programs", used, cutoff)
        jobs = await asyncio.to_thread(_stale_dirs, workdirs.root / "jobs", set(), cutoff)
    except OSError as exc:
        done.notes.append(f"could not list {workdirs.root}: {exc}")
        return
    for directory in programs + jobs:
        if not dry_run:
            if directory.parent.name == "programs":
                workdirs.forget(directory.name)
            await asyncio.to_thread(shutil.rmtree, directory, True)
        done.directories.append(directory)


async def collect_periodically(
    sessionmaker: SessionMaker,
    storage: Storage,
    *,
    interval: Callable[[], float],
    grace: Callable[[], timedelta],
    workdirs: Workdirs | None,
) -> None:
    """Collect every `interval()` seconds until cancelled; a failed pass is logged and tried again next time."""
    while True:
        await asyncio.sleep(interval())
        try:
            done = await collect_garbage(sessionmaker, storage, grace=grace(), workdirs=workdirs)
        except Exception:
            logger.exception("garbage collection failed; trying again in %.0f s", interval())
            continue
        if done.objects or done.directories:
            logger.info(
                "garbage collection removed %d stored objects and %d directories",
                len(done.objects),
                len(done.directories),
            )
        for note in done.notes:
            logger.info("garbage collection: %s", note)
