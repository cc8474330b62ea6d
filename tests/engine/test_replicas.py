"""Several dispatchers on one database: every job is submitted to Ray exactly once and the caps hold."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from serverless_gateway.auth import TokenCache
from serverless_gateway.config import Settings
from serverless_gateway.db import create_engine, create_sessionmaker
from serverless_gateway.engine.ray_client import RayJobs
from serverless_gateway.engine.runtime import EngineRuntime, start_engine
from serverless_gateway.models import Job, JobStatus
from serverless_gateway.state import GatewayState
from serverless_gateway.storage import open_storage
from tests.engine.conftest import LiveGateway, run_job, upload, wait_all_terminal

pytestmark = pytest.mark.ray

MARKING_PROGRAM = """
import os
with open(os.path.join({marks!r}, os.environ["ENV_JOB_ID_GATEWAY"]), "a") as handle:
    handle.write("ran\\n")
"""


async def replica(settings: Settings) -> AsyncIterator[EngineRuntime]:
    assert settings.database_url is not None
    db_engine = create_engine(settings.database_url, pool_size=4)
    storage = await open_storage(settings)
    state = GatewayState(
        settings=settings,
        db_engine=db_engine,
        sessionmaker=create_sessionmaker(db_engine),
        storage=storage,
        token_cache=TokenCache(0),
    )
    engine = await start_engine(state)
    try:
        yield engine
    finally:
        await engine.close()
        await storage.close()
        await db_engine.dispose()


@pytest.mark.usefixtures("quiet_live")
async def test_two_dispatchers_submit_twenty_jobs_exactly_once(
    live: LiveGateway,
    gw: httpx.AsyncClient,
    make_user: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accepted: collections.Counter[str] = collections.Counter()
    original_submit = RayJobs.submit

    async def counting_submit(self: RayJobs, **kwargs: Any) -> bool:
        new = await original_submit(self, **kwargs)
        if new:
            accepted[kwargs["submission_id"]] += 1
        return new

    monkeypatch.setattr(RayJobs, "submit", counting_submit)
    marks = tmp_path / "marks"
    marks.mkdir()
    users = [await make_user(f"burst-{index}") for index in range(5)]
    for user in users:
        await upload(gw, user, "mark", {"main.py": MARKING_PROGRAM.format(marks=str(marks))})

    # Two dispatchers on the database, each with its own work directory (the live app's engine is paused).
    replicas = [
        replica(live.state.settings.model_copy(update={"data_dir": tmp_path / f"replica-{index}"}))
        for index in range(2)
    ]
    engines = [await anext(generator) for generator in replicas]
    peak = {"user": 0, "all": 0}
    done = asyncio.Event()

    async def watch_caps() -> None:
        while not done.is_set():
            async with live.state.sessionmaker() as session:
                rows = await session.execute(
                    select(Job.author_id, func.count())
                    .where(Job.status.in_((JobStatus.PENDING.value, JobStatus.RUNNING.value)))
                    .group_by(Job.author_id)
                )
                counts = [count for _, count in rows.all()]
            peak["user"] = max([peak["user"], *counts])
            peak["all"] = max(peak["all"], sum(counts))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_caps())
    try:
        job_ids: list[uuid.UUID] = []
        for round_ in range(4):
            job_ids += await asyncio.gather(*(run_job(gw, user, "mark", {"round": round_}) for user in users))
        jobs = await wait_all_terminal(live.state, job_ids, timeout=480)
    finally:
        done.set()
        await watcher
        for generator in replicas:
            with pytest.raises(StopAsyncIteration):
                await anext(generator)

    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED.value] * 20, [job.message for job in jobs]
    assert sorted(accepted) == sorted(f"gw-{job_id}" for job_id in job_ids)
    assert set(accepted.values()) == {1}
    assert all((marks / str(job_id)).read_text() == "ran\n" for job_id in job_ids)
    settings = live.state.settings
    assert peak["user"] <= settings.max_running_jobs_per_user
    assert peak["all"] <= settings.max_running_jobs
    assert all(engine.recovered.is_set() for engine in engines)
    split = [engine.dispatcher.submitted_count for engine in engines if engine.dispatcher]
    assert sum(split) == 20, split
