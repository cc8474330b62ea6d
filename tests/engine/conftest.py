"""Engine fixtures: one local Ray head per test session and the gateway served over real HTTP (jobs call it back)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings
from serverless_gateway.engine.local_ray import LocalRayHead, free_port
from serverless_gateway.engine.runtime import EngineRuntime
from serverless_gateway.models import Job, JobStatus, Program
from serverless_gateway.state import GatewayState
from tests.conftest import TestUser, make_tar, upload_program

# The machine has no route to PyPI: make a failing pip install fail fast instead of retrying for a minute.
PIP_FAST_FAIL = {"PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "2", "RUNTIME_ENV_RETRY_TIMES": "1"}


@pytest.fixture(scope="session")
async def ray_head(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalRayHead]:
    saved = {key: os.environ.get(key) for key in PIP_FAST_FAIL}
    os.environ.update(PIP_FAST_FAIL)
    # Wait for the temp dir (pip environments included) to be removed: CI machines can be short of disk.
    head = LocalRayHead(tmp_path_factory.mktemp("ray"), removal_budget=300.0)
    try:
        await head.start()
        yield head
    finally:
        await head.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def engine_settings_for(
    base: Settings, *, ray_address: str | None, port: int, data_dir: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "ray_address": ray_address,
        "public_url": f"http://127.0.0.1:{port}",
        "run_engine": True,
        "data_dir": data_dir,
        "storage_url": base.resolved_storage_url,
        "sync_interval_seconds": 0.5,
        "sweep_interval_seconds": 2.0,
        "max_running_jobs": 16,
        "max_running_jobs_per_user": 4,
        "max_upload_bytes": 4 * 1024 * 1024,
        "max_artifact_bytes": 4 * 1024 * 1024,
    }
    values.update(overrides)
    return base.model_copy(update=values)


@dataclass
class LiveGateway:
    """The app served by uvicorn on a free port, in the test session's event loop."""

    app: FastAPI
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, timeout=30)


async def serve_app(settings: Settings, port: int, *, start_engine: bool = True) -> LiveGateway:
    app = create_app(settings, start_engine=start_engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.05)
    return LiveGateway(app=app, url=f"http://127.0.0.1:{port}", server=server, task=task)


@pytest.fixture(scope="session")
async def live(
    settings: Settings, ray_head: LocalRayHead, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveGateway]:
    port = free_port()
    assert ray_head.dashboard_url is not None
    engine_settings = engine_settings_for(
        settings, ray_address=ray_head.dashboard_url, port=port, data_dir=tmp_path_factory.mktemp("engine-data")
    )
    gateway = await serve_app(engine_settings, port)
    yield gateway
    await gateway.stop()


@pytest.fixture
async def gw(live: LiveGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        yield http


async def run_job(
    gw: httpx.AsyncClient, user: TestUser, title: str, arguments: dict[str, object] | None = None
) -> uuid.UUID:
    response = await gw.post(
        "/api/v1/programs/run/",
        headers=user.headers,
        json={"title": title, "arguments": arguments or {}},
    )
    assert response.status_code in (200, 201), response.text
    return uuid.UUID(response.json()["id"])


async def upload(
    gw: httpx.AsyncClient, user: TestUser, title: str, files: dict[str, str | bytes], **fields: str
) -> None:
    await upload_program(gw, user, title, files=files, **fields)


async def job_row(state: GatewayState, job_id: uuid.UUID) -> Job:
    async with state.sessionmaker() as session:
        job = await session.scalar(select(Job).where(Job.id == job_id))
    assert job is not None
    return job


async def wait_status(
    state: GatewayState, job_id: uuid.UUID, wanted: Iterable[JobStatus], *, timeout: float = 90
) -> Job:
    targets = set(wanted)
    deadline = time.monotonic() + timeout
    while True:
        job = await job_row(state, job_id)
        if JobStatus(job.status) in targets:
            return job
        if JobStatus(job.status).is_terminal() or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job.status} (message {job.message!r}), wanted {targets}")
        await asyncio.sleep(0.1)


async def wait_logs_stored(state: GatewayState, job_id: uuid.UUID, *, timeout: float = 30) -> Job:
    """The job once its log is in storage: a success its launcher reported is final at once, and its log is
    stored a moment later (readers get it from Ray in between)."""
    deadline = time.monotonic() + timeout
    while (job := await job_row(state, job_id)).logs_key is None:
        assert time.monotonic() < deadline, f"the log of job {job_id} was not stored"
        await asyncio.sleep(0.1)
    return job


async def wait_all_terminal(state: GatewayState, job_ids: Iterable[uuid.UUID], *, timeout: float = 120) -> list[Job]:
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        async with state.sessionmaker() as session:
            jobs = list((await session.scalars(select(Job).where(Job.id.in_(ids)))).all())
        if len(jobs) == len(ids) and all(JobStatus(job.status).is_terminal() for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            pending = [(job.id, job.status) for job in jobs if not JobStatus(job.status).is_terminal()]
            raise AssertionError(f"jobs still active after {timeout} s: {pending[:5]}")
        await asyncio.sleep(0.2)


@pytest.fixture
def tune_live(live: LiveGateway) -> Iterator[Callable[..., None]]:
    """Change the live gateway's settings for one test (the engine reads them on every pass)."""
    original = live.state.settings
    engine = live.state.engine
    assert isinstance(engine, EngineRuntime)  # its state is the API's but for its own database pool

    def tune(**changes: object) -> None:
        live.state.settings = engine.state.settings = original.model_copy(update=changes)

    yield tune
    live.state.settings = engine.state.settings = original


async def add_program_row(
    state: GatewayState, owner: TestUser, title: str, files: dict[str, str | bytes], *, entrypoint: str = "main.py"
) -> uuid.UUID:
    """A program stored without the upload endpoint's checks (to run what an upload would refuse)."""
    archive = make_tar(files)
    sha = hashlib.sha256(archive).hexdigest()
    key = f"test-artifacts/{sha}.tar"
    await state.storage.put_bytes(key, archive)
    async with state.sessionmaker.begin() as session:
        program = Program(
            id=uuid.uuid4(),
            title=title,
            entrypoint=entrypoint,
            artifact_key=key,
            artifact_sha256=sha,
            author_id=owner.id,
        )
        session.add(program)
    return program.id


@pytest.fixture
def quiet_live(live: LiveGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pause the live gateway's engine (it shares the database) while a test drives its own engines."""
    engine = live.state.engine
    assert isinstance(engine, EngineRuntime)
    assert engine.dispatcher is not None
    assert engine.sync is not None

    async def nothing() -> int:
        return 0

    async def no_stops() -> bool:
        return False

    monkeypatch.setattr(engine.dispatcher, "dispatch", nothing)
    monkeypatch.setattr(engine.sync, "sync_once", nothing)
    monkeypatch.setattr(engine.sync, "handle_stops", no_stops)
