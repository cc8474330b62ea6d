"""Garbage collection against the real database and local storage: only unreferenced, old objects go."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from sqlalchemy import delete, update

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings
from serverless_gateway.models import Job, Program
from serverless_gateway.repositories import retention as repo
from serverless_gateway.services import retention
from serverless_gateway.services.retention import Collected, Workdirs, collect_garbage
from serverless_gateway.storage.local import LocalStorage
from tests.api.jobs_support import add_job, add_program
from tests.test_cli_admin import Cli, cli, ok

if TYPE_CHECKING:
    from tests.conftest import TestUser

__all__ = ["cli"]

GRACE = timedelta(hours=1)
LATER = datetime.now(UTC) + 2 * GRACE  # everything stored during the test is older than the grace period then
SHA_USED, SHA_OLD = "a" * 64, "b" * 64


@pytest.fixture
async def storage(tmp_path: Path) -> LocalStorage:
    local = LocalStorage(tmp_path / "store")
    await local.check()
    return local


async def program_using(app: FastAPI, owner: TestUser, sha: str) -> uuid.UUID:
    program_id = await add_program(app, owner, f"fn-{sha[:4]}-{uuid.uuid4().hex[:6]}")
    async with app.state.gateway.sessionmaker.begin() as session:
        await session.execute(
            update(Program)
            .where(Program.id == program_id)
            .values(artifact_key=f"artifacts/{sha}.tar", artifact_sha256=sha)
        )
    return program_id


async def stored_world(app: FastAPI, storage: LocalStorage, owner: TestUser) -> dict[str, bool]:
    """Objects in storage, each mapped to whether a collection must keep it."""
    program = await program_using(app, owner, SHA_USED)
    kept_job = await add_job(
        app, owner, program, status="SUCCEEDED", result_key="results/kept.json", logs_key="logs/kept.log"
    )
    assert kept_job is not None
    await add_job(app, owner, program, status="SUCCEEDED", result_key="results/gone.json", logs_key="logs/gone.log")
    async with app.state.gateway.sessionmaker.begin() as session:
        await session.execute(delete(Job).where(Job.result_key == "results/gone.json"))
    world = {
        f"artifacts/{SHA_USED}.tar": True,
        f"artifacts/{SHA_OLD}.tar": False,
        "results/kept.json": True,
        "results/gone.json": False,
        "results/never-committed.json": False,
        "logs/kept.log": True,
        "logs/gone.log": False,
        "files/users/someone/_/fn/data.csv": True,  # user files are never collected
        "elsewhere/thing": True,
    }
    for key in world:
        await storage.put_bytes(key, b"x")
    return world


async def remaining(storage: LocalStorage, keys: dict[str, bool]) -> dict[str, bool]:
    return {key: await storage.exists(key) for key in keys}


@pytest.mark.parametrize("batch", [200, 1])
async def test_only_unreferenced_objects_past_the_grace_period_go(
    app: FastAPI, storage: LocalStorage, alice: TestUser, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    monkeypatch.setattr(retention, "BATCH", batch)
    sessions = app.state.gateway.sessionmaker
    world = await stored_world(app, storage, alice)

    young = await collect_garbage(sessions, storage, grace=GRACE)
    assert young.objects == []
    assert all((await remaining(storage, world)).values())

    dry = await collect_garbage(sessions, storage, grace=GRACE, dry_run=True, now=LATER)
    expected_gone = sorted(key for key, keep in world.items() if not keep)
    assert sorted(dry.objects) == expected_gone
    assert all((await remaining(storage, world)).values())

    done = await collect_garbage(sessions, storage, grace=GRACE, now=LATER)
    assert sorted(done.objects) == expected_gone
    assert await remaining(storage, world) == world
    assert (await collect_garbage(sessions, storage, grace=GRACE, now=LATER)).objects == []


async def test_artifacts_stay_while_a_submission_is_built_from_a_changed_program(
    app: FastAPI, storage: LocalStorage, alice: TestUser
) -> None:
    sessions = app.state.gateway.sessionmaker
    world = await stored_world(app, storage, alice)
    program = await program_using(app, alice, SHA_USED)
    claimed = await add_job(app, alice, program, status="PENDING")
    async with sessions.begin() as session:  # the program is replaced after the claim
        await session.execute(update(Program).where(Program.id == program).values(updated_at=datetime.now(UTC)))

    done = await collect_garbage(sessions, storage, grace=GRACE, now=LATER)
    assert f"artifacts/{SHA_OLD}.tar" not in done.objects
    assert any("artifacts kept" in note for note in done.notes)
    assert "results/gone.json" in done.objects  # results and logs do not wait

    async with sessions.begin() as session:
        await session.execute(update(Job).where(Job.id == claimed).values(submitted_at=datetime.now(UTC)))
    done = await collect_garbage(sessions, storage, grace=GRACE, now=LATER)
    assert done.objects == [f"artifacts/{SHA_OLD}.tar"]
    assert await remaining(storage, world) == world


async def test_a_collection_waits_for_an_upload_that_may_reuse_an_artifact(
    app: FastAPI, storage: LocalStorage, alice: TestUser
) -> None:
    sessions = app.state.gateway.sessionmaker
    await storage.put_bytes(f"artifacts/{SHA_OLD}.tar", b"x")
    async with sessions() as upload:
        await repo.hold_artifacts_shared(upload)
        collecting = asyncio.create_task(collect_garbage(sessions, storage, grace=GRACE, now=LATER))
        await asyncio.sleep(0.5)
        assert not collecting.done()
        # The upload saw the artifact stored and now commits a program naming it.
        program = Program(
            id=uuid.uuid4(),
            title="reuses",
            entrypoint="main.py",
            artifact_key=f"artifacts/{SHA_OLD}.tar",
            artifact_sha256=SHA_OLD,
            author_id=alice.id,
        )
        upload.add(program)
        await upload.commit()
    done: Collected = await asyncio.wait_for(collecting, timeout=10)
    assert done.objects == []
    assert await storage.exists(f"artifacts/{SHA_OLD}.tar")


def age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


async def test_workdirs_of_unused_artifacts_and_left_over_job_packages_go(
    app: FastAPI, storage: LocalStorage, alice: TestUser, tmp_path: Path
) -> None:
    await program_using(app, alice, SHA_USED)
    root = tmp_path / "workdirs"
    old_used, old_unused, young_unused = (
        root / "programs" / SHA_USED,
        root / "programs" / SHA_OLD,
        root / "programs" / ("c" * 64),
    )
    old_job, young_job = root / "jobs" / str(uuid.uuid4()), root / "jobs" / str(uuid.uuid4())
    for directory in (old_used, old_unused, young_unused, old_job, young_job):
        (directory / "inner").mkdir(parents=True)
        (directory / "inner" / "main.py").write_text("print(1)\n")
    for directory in (old_used, old_unused, old_job):
        age(directory, 2 * GRACE.total_seconds())
    outside = tmp_path / "outside"
    outside.mkdir()
    age(outside, 2 * GRACE.total_seconds())
    (root / "programs" / "link").symlink_to(outside, target_is_directory=True)
    forgotten: list[str] = []

    done = await collect_garbage(
        app.state.gateway.sessionmaker, storage, grace=GRACE, workdirs=Workdirs(root, forgotten.append)
    )
    assert sorted(done.directories) == sorted([old_unused, old_job])
    assert forgotten == [SHA_OLD]
    assert not old_unused.exists()
    assert not old_job.exists()
    for kept in (old_used, young_unused, young_job, outside):
        assert kept.is_dir()


async def test_gc_command_prints_what_it_removes(cli: Cli, tmp_path: Path, app: FastAPI, alice: TestUser) -> None:
    local = LocalStorage(tmp_path / "storage")  # the CLI's default storage under GATEWAY_DATA_DIR
    await local.check()
    await program_using(app, alice, SHA_USED)
    for sha in (SHA_USED, SHA_OLD):
        await local.put_bytes(f"artifacts/{sha}.tar", b"x")
        age(tmp_path / "storage" / "artifacts" / f"{sha}.tar", 2 * GRACE.total_seconds())

    dry = await ok(cli, "gc", "--dry-run")
    assert dry == f"would remove artifacts/{SHA_OLD}.tar\nwould remove 1 stored objects and 0 directories\n"
    assert await local.exists(f"artifacts/{SHA_OLD}.tar")
    done = await ok(cli, "gc")
    assert done == f"removed artifacts/{SHA_OLD}.tar\nremoved 1 stored objects and 0 directories\n"
    assert not await local.exists(f"artifacts/{SHA_OLD}.tar")
    assert await local.exists(f"artifacts/{SHA_USED}.tar")
    assert await ok(cli, "gc") == "removed 0 stored objects and 0 directories\n"


@pytest.mark.parametrize("run_engine", [True, False])
async def test_the_app_collects_periodically_only_where_the_engine_runs(
    settings: Settings, tmp_path: Path, run_engine: bool
) -> None:
    local = LocalStorage(tmp_path / "store")
    await local.check()
    await local.put_bytes("logs/orphan.log", b"x")
    age(tmp_path / "store" / "logs" / "orphan.log", 2 * GRACE.total_seconds())
    tuned = settings.model_copy(
        update={
            "run_engine": run_engine,
            "ray_address": None,
            "data_dir": tmp_path,
            "storage_url": f"file://{tmp_path / 'store'}",
            "gc_interval_seconds": 0.1,
            "gc_grace_seconds": GRACE.total_seconds(),
        }
    )
    app = create_app(tuned)
    async with app.router.lifespan_context(app):
        # An API-only replica collects nothing however many intervals pass.
        deadline = time.monotonic() + (5 if run_engine else 0.5)
        while await local.exists("logs/orphan.log") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert await local.exists("logs/orphan.log") is not run_engine


async def test_gc_command_takes_workdirs_only_when_asked(cli: Cli, tmp_path: Path) -> None:
    unused = tmp_path / "workdirs" / "programs" / SHA_OLD
    unused.mkdir(parents=True)
    age(unused, 2 * GRACE.total_seconds())
    assert await ok(cli, "gc") == "removed 0 stored objects and 0 directories\n"
    assert unused.is_dir()
    assert await ok(cli, "gc", "--workdirs", "--dry-run") == (
        f"would remove {unused.resolve()}/\nwould remove 0 stored objects and 1 directories\n"
    )
    assert unused.is_dir()
    await ok(cli, "gc", "--workdirs")
    assert not unused.exists()
