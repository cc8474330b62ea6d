"""Stopping jobs in every state, and jobs whose runtime environment cannot be built."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from serverless_gateway.engine.runtime import EngineRuntime
from serverless_gateway.engine.submission import submission_id_for
from serverless_gateway.models import JobStatus
from serverless_gateway.repositories.engine import PREPARING_MESSAGE
from tests.conftest import TestUser
from tests.engine.conftest import LiveGateway, job_row, run_job, upload, wait_status

pytestmark = pytest.mark.ray

SLEEPER = "import time\nprint('sleeping now', flush=True)\ntime.sleep(300)\nprint('woke up')\n"


def engine_of(live: LiveGateway) -> EngineRuntime:
    engine = live.state.engine
    assert isinstance(engine, EngineRuntime)
    return engine


async def stop(gw: httpx.AsyncClient, user: TestUser, job_id: object) -> httpx.Response:
    response = await gw.post(f"/api/v1/jobs/{job_id}/stop/", headers=user.headers, json={"service": None})
    assert response.status_code == 200, response.text
    return response


async def test_stop_queued_running_and_finished_jobs(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, tune_live: Callable[..., None]
) -> None:
    tune_live(max_running_jobs_per_user=1)
    await upload(gw, alice, "sleeper", {"main.py": SLEEPER})
    running = await run_job(gw, alice, "sleeper")
    await wait_status(live.state, running, {JobStatus.RUNNING})
    deadline = time.monotonic() + 60
    while "sleeping now" not in (await gw.get(f"/api/v1/jobs/{running}/logs/", headers=alice.headers)).json()["logs"]:
        assert time.monotonic() < deadline, "live logs never showed the job's output"
        await asyncio.sleep(0.2)

    queued = await run_job(gw, alice, "sleeper")
    await asyncio.sleep(live.state.settings.sweep_interval_seconds + 0.5)
    assert (await job_row(live.state, queued)).status == JobStatus.QUEUED  # the per-user cap holds it back

    await stop(gw, alice, queued)
    stopped = await wait_status(live.state, queued, {JobStatus.STOPPED}, timeout=10)
    assert stopped.ray_submission_id is None
    assert await engine_of(live).ray.job_state(submission_id_for(queued)) is None  # type: ignore[union-attr]

    await stop(gw, alice, running)
    job = await wait_status(live.state, running, {JobStatus.STOPPED}, timeout=60)
    assert job.finished_at is not None
    logs = (await gw.get(f"/api/v1/jobs/{running}/logs/", headers=alice.headers)).json()["logs"]
    assert "sleeping now" in logs
    assert "woke up" not in logs

    again = await stop(gw, alice, running)
    assert "already" in again.json()["message"].lower()
    assert (await job_row(live.state, running)).status == JobStatus.STOPPED


async def test_uninstallable_dependency_fails_and_a_pending_job_stops(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    await upload(gw, alice, "bad-dep", {"main.py": "print('never')\n"}, dependencies='["gateway-no-such-pkg==9.9"]')
    failing = await run_job(gw, alice, "bad-dep")
    pending = await run_job(gw, alice, "bad-dep")  # same environment: Ray builds it once for both

    # Ray keeps the job PENDING while it builds the environment (clones a virtualenv, runs pip).
    await wait_status(live.state, pending, {JobStatus.PENDING}, timeout=30)
    ray = engine_of(live).ray
    assert ray is not None
    deadline = time.monotonic() + 60
    while (state := await ray.job_state(submission_id_for(pending))) is None or state.status != "PENDING":
        assert time.monotonic() < deadline, f"Ray never reported the job PENDING: {state}"
        await asyncio.sleep(0.2)
    # What its user sees meanwhile: why it is still PENDING.
    while (shown := (await gw.get(f"/api/v1/jobs/{pending}/", headers=alice.headers)).json())["status"] == "PENDING":
        if shown.get("message") == PREPARING_MESSAGE:
            break
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.1)
    assert shown["message"] == PREPARING_MESSAGE, shown
    await stop(gw, alice, pending)
    stopped = await wait_status(live.state, pending, {JobStatus.STOPPED}, timeout=300)
    assert stopped.started_at is None

    job = await wait_status(live.state, failing, {JobStatus.FAILED}, timeout=60)
    assert job.message is not None
    assert "gateway-no-such-pkg" in job.message, "the message names what pip could not install"
    logs = (await gw.get(f"/api/v1/jobs/{failing}/logs/", headers=alice.headers)).json()["logs"]
    assert "gateway-no-such-pkg" in logs
    assert "never" not in logs.replace("print('never')", "")
