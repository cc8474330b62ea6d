"""The dispatcher without Ray: building a submission has a time limit, and a disk error fails the job with why."""

from __future__ import annotations

import asyncio
import errno
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import update

from serverless_gateway.engine.clusters.router import Clusters
from serverless_gateway.engine.dispatcher import Dispatcher
from serverless_gateway.engine.ray_client import RayJobs
from serverless_gateway.engine.workdirs import Workdirs
from serverless_gateway.models import JobStatus, Program
from serverless_gateway.services.artifacts import artifact_key
from tests.api.jobs_support import add_job, job_columns
from tests.api.programs_support import tune_settings
from tests.conftest import TestUser, upload_program
from tests.services.test_artifacts_hostile import symlink_ladder

__all__ = ["tune_settings"]


class FakeRay:
    """Records submissions; knows no job."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []

    async def submit(self, **kwargs: Any) -> None:
        self.submitted.append(kwargs)

    async def job_state(self, submission_id: str) -> None:
        return None


class SlowWorkdirs(Workdirs):
    async def program_dir(self, *, sha256: str, artifact_key: str) -> Path:
        await asyncio.sleep(30)
        raise AssertionError("not reached")


class FullDiskWorkdirs(Workdirs):
    async def launcher_package(self) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", "/srv/gateway/secret-dir")


async def dispatch_and_wait(app: FastAPI, dispatcher: Dispatcher, job_id: uuid.UUID, timeout: float = 10.0) -> Any:
    assert await dispatcher.dispatch() == 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await job_columns(app, job_id)
        if JobStatus(job.status).is_terminal() or job.submitted_at is not None:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} neither failed nor was submitted in {timeout} s")


async def run_one(
    app: FastAPI, client: AsyncClient, user: TestUser, kind: type[Workdirs], tmp_path: Path, *, artifact: bytes = b""
) -> tuple[Any, FakeRay, float]:
    """Queue one job (on `artifact` when given), dispatch it with `kind` of workdirs: (its row, Ray, seconds)."""
    state = app.state.gateway
    ray = FakeRay()
    clusters = Clusters(sessionmaker=state.sessionmaker, shared=cast(RayJobs, ray), local=None)
    dispatcher = Dispatcher(state=state, clusters=clusters, workdirs=kind(tmp_path / "work", state.storage))
    program = await upload_program(client, user, f"p-{uuid.uuid4().hex[:6]}")
    job_id = await add_job(app, user, uuid.UUID(str(program["id"])), arguments="{}")
    if artifact:
        key = artifact_key("b" * 64)
        await state.storage.put_bytes(key, artifact)
        async with state.sessionmaker.begin() as session:
            await session.execute(
                update(Program).where(Program.id == program["id"]).values(artifact_key=key, artifact_sha256="b" * 64)
            )
    started = time.monotonic()
    try:
        job = await dispatch_and_wait(app, dispatcher, job_id)
    finally:
        await dispatcher.close()
    assert job.status == JobStatus.PENDING.value or not dispatcher.owns(job_id)  # a failed job awaits no retry
    return job, ray, time.monotonic() - started


async def test_a_healthy_job_is_submitted(app: FastAPI, client: AsyncClient, alice: TestUser, tmp_path: Path) -> None:
    job, ray, _ = await run_one(app, client, alice, Workdirs, tmp_path)
    assert job.status == JobStatus.PENDING.value
    assert job.submitted_at is not None
    assert [s["submission_id"] for s in ray.submitted] == [f"gw-{job.id}"]


async def test_a_slow_build_fails_the_job_naming_the_limit(
    app: FastAPI, client: AsyncClient, alice: TestUser, tmp_path: Path, tune_settings: Callable[..., None]
) -> None:
    tune_settings(submission_build_timeout_seconds=0.3)
    job, ray, seconds = await run_one(app, client, alice, SlowWorkdirs, tmp_path)
    assert seconds < 5
    assert job.status == JobStatus.FAILED.value
    assert "longer than 0.3 s" in job.message
    assert "GATEWAY_SUBMISSION_BUILD_TIMEOUT_SECONDS" in job.message
    assert ray.submitted == []


async def test_a_disk_error_fails_the_job_with_its_reason(
    app: FastAPI, client: AsyncClient, alice: TestUser, tmp_path: Path
) -> None:
    job, ray, _ = await run_one(app, client, alice, FullDiskWorkdirs, tmp_path)
    assert job.status == JobStatus.FAILED.value
    assert "No space left on device" in job.message
    assert "secret-dir" not in job.message
    assert ray.submitted == []


async def test_a_stored_ladder_of_directory_symlinks_fails_fast(
    app: FastAPI, client: AsyncClient, alice: TestUser, tmp_path: Path
) -> None:
    """An artifact stored before uploads refused it: the engine refuses it too, instead of walking 2**24 paths."""
    job, ray, seconds = await run_one(app, client, alice, Workdirs, tmp_path, artifact=symlink_ladder(24))
    assert seconds < 5
    assert job.status == JobStatus.FAILED.value
    assert "symlinks to directories" in job.message
    assert ray.submitted == []
