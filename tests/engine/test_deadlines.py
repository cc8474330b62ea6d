"""The maximum run time: overdue jobs are asked to stop with the limit as reason, and end STOPPED saying so."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from serverless_gateway.engine.deadlines import request_overdue_stops
from serverless_gateway.models import JobStatus
from tests.api.jobs_support import add_job, add_program, job_columns
from tests.conftest import TestUser
from tests.engine.conftest import LiveGateway, job_row, upload, wait_status

# A day ahead: the session's live engine shares this database and checks deadlines against the real clock, so
# it must never find these rows overdue itself (it did, and marked them first, when NOW was the real time).
NOW = datetime.now(UTC) + timedelta(days=1)
DEFAULT = 50
CONFIG_REASON = "Stopped: the job ran longer than its maximum run time of 3 seconds (config.max_run_seconds)."
DEFAULT_REASON = (
    f"Stopped: the job ran longer than its maximum run time of {DEFAULT} seconds (GATEWAY_MAX_JOB_SECONDS)."
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


async def test_overdue_jobs_are_marked_with_the_limit_that_applies(app: FastAPI, alice: TestUser) -> None:
    program = await add_program(app, alice, "fn")
    sessions = app.state.gateway.sessionmaker

    async def job(status: str, config: dict[str, Any] | None = None, **columns: Any) -> uuid.UUID:
        return await add_job(app, alice, program, status=status, config=config or {}, created_at=ago(1000), **columns)

    expected = {
        await job("RUNNING", {"max_run_seconds": 3}, started_at=ago(10)): CONFIG_REASON,
        await job("RUNNING", started_at=ago(DEFAULT + 1)): DEFAULT_REASON,
        # A config cannot ask for more than the gateway allows.
        await job("RUNNING", {"max_run_seconds": 10 * DEFAULT}, started_at=ago(DEFAULT + 1)): DEFAULT_REASON,
        # Time building the environment on Ray counts, from the submission.
        await job("PENDING", {"max_run_seconds": 3}, submitted_at=ago(4)): CONFIG_REASON,
    }
    for hostile in ("3", True, -1, 0, 2.5, None, [3], {"x": 3}):
        expected[await job("RUNNING", {"max_run_seconds": hostile}, started_at=ago(DEFAULT + 1))] = DEFAULT_REASON
    untouched = [
        await job("RUNNING", {"max_run_seconds": 3}, started_at=ago(2)),
        await job("RUNNING", started_at=ago(DEFAULT - 1)),
        await job("PENDING", {"max_run_seconds": 3}),  # claimed but not yet on Ray
        await job("QUEUED", {"max_run_seconds": 3}),  # waiting for capacity does not count
        await job("SUCCEEDED", {"max_run_seconds": 3}, started_at=ago(100), finished_at=ago(90)),
        await job("RUNNING", {"max_run_seconds": 3}, started_at=ago(100), stop_requested=True),
    ]

    marked = await request_overdue_stops(sessions, NOW, DEFAULT)
    assert sorted(marked) == sorted(expected)
    for job_id, reason in expected.items():
        row = await job_columns(app, job_id)
        assert row.stop_requested
        assert row.stop_reason == reason
    for job_id in untouched:
        assert (await job_columns(app, job_id)).stop_reason is None
    assert await request_overdue_stops(sessions, NOW, DEFAULT) == []


async def test_the_run_config_may_ask_for_less_but_not_more(
    app: FastAPI, client: httpx.AsyncClient, alice: TestUser
) -> None:
    await add_program(app, alice, "fn")
    limit = app.state.gateway.settings.max_job_seconds
    for bad in (0, -5, "60", 1.5, True, limit + 1):
        run = {"title": "fn", "arguments": {}, "config": {"max_run_seconds": bad}}
        response = await client.post("/api/v1/programs/run/", headers=alice.headers, json=run)
        assert response.status_code == 400, (bad, response.text)
        assert "max_run_seconds" in response.json()["message"]
    run = {"title": "fn", "arguments": {}, "config": {"max_run_seconds": 60}}
    response = await client.post("/api/v1/programs/run/", headers=alice.headers, json=run)
    assert response.status_code == 200, response.text
    assert (await job_columns(app, uuid.UUID(response.json()["id"]))).config["max_run_seconds"] == 60


@pytest.mark.ray
async def test_a_job_past_its_run_time_ends_stopped_naming_the_limit(live: LiveGateway, alice: TestUser) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as gw:
        await upload(gw, alice, "sleepy", {"main.py": "import time\nprint('started', flush=True)\ntime.sleep(60)\n"})
        run = {"title": "sleepy", "arguments": {}, "config": {"max_run_seconds": 3}}
        response = await gw.post("/api/v1/programs/run/", headers=alice.headers, json=run)
        assert response.status_code == 200, response.text
        job_id = uuid.UUID(response.json()["id"])
        job = await wait_status(live.state, job_id, {JobStatus.STOPPED}, timeout=45)
        assert job.message == CONFIG_REASON
        assert job.submitted_at is not None
        assert job.finished_at is not None
        # Counted from the submission to Ray (building the environment counts), well before the 60 s sleep ends.
        assert timedelta(seconds=3) <= job.finished_at - job.submitted_at < timedelta(seconds=30)
        shown = (await gw.get(f"/api/v1/jobs/{job_id}/", headers=alice.headers)).json()
        assert shown["status"] == "STOPPED"
        assert shown["message"] == CONFIG_REASON
        assert (await job_row(live.state, job_id)).stop_reason == CONFIG_REASON
