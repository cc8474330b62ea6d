"""A provider's private lines stay out of what its user reads of a failed job: message, logs (no Ray needed)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.engine.clusters.router import Clusters
from serverless_gateway.engine.dispatcher import Dispatcher
from serverless_gateway.engine.ray_client import RayJobs, RayJobState
from serverless_gateway.engine.sync import StatusSync
from serverless_gateway.engine.workdirs import Workdirs
from serverless_gateway.models import JobStatus
from serverless_gateway.repositories.engine import ActiveJob
from tests.api.jobs_support import add_job, add_program, job_columns
from tests.api.programs_support import make_provider
from tests.conftest import TestUser

SECRET = "sk-provider-4242"
LOGS = (
    "[PUBLIC] starting the solver\n"
    f"[PRIVATE] loading weights with key {SECRET}\rstill private {SECRET}\n"
    "Traceback (most recent call last):\n"
    '  File "main.py", line 3, in <module>\n'
    f'    raise RuntimeError("[PRIVATE] {SECRET}")\n'
    f"RuntimeError: [PRIVATE] {SECRET}\n"
)


@pytest.fixture
async def carol_admin(app: FastAPI, make_user: Any) -> TestUser:
    """An admin of the provider `acme`."""
    carol: TestUser = await make_user("carol")
    await make_provider(app, "acme", carol)
    return carol


class FakeRay:
    def __init__(self, logs: str):
        self._logs = logs

    async def logs(self, submission_id: str, max_bytes: int, *, wait_end: bool = True) -> str:
        return self._logs

    async def delete(self, submission_id: str) -> None:
        return None


async def finish_failed(app: FastAPI, job_id: uuid.UUID, ray_message: str, tmp_path: Path) -> Any:
    state = app.state.gateway
    ray = cast(RayJobs, FakeRay(LOGS))
    clusters = Clusters(sessionmaker=state.sessionmaker, shared=ray, local=None)
    dispatcher = Dispatcher(state=state, clusters=clusters, workdirs=Workdirs(tmp_path, state.storage))
    sync = StatusSync(state=state, clusters=clusters, dispatcher=dispatcher)
    job = await job_columns(app, job_id)
    row = ActiveJob(
        id=job_id,
        status=JobStatus.RUNNING,
        submission_id=f"gw-{job_id}",
        stop_requested=False,
        submitted_at=job.created_at,
        updated_at=job.updated_at,
    )
    await sync._finish(row, RayJobState(submission_id=f"gw-{job_id}", status="FAILED", message=ray_message))
    return await job_columns(app, job_id)


RAY_MESSAGES = [
    f"Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n{LOGS}",
    "Job entrypoint command failed with exit code 1",
    f"Job entrypoint command failed with exit code 1\n{LOGS}",
]


async def test_the_consumer_never_reads_the_private_exception_line(
    app: FastAPI, client: AsyncClient, alice: TestUser, carol_admin: TestUser, tmp_path: Path
) -> None:
    solver = await add_program(app, carol_admin, "solver", provider="acme")
    for index, ray_message in enumerate(RAY_MESSAGES):
        job_id = await add_job(app, alice, solver, status="RUNNING", ray_submission_id=f"gw-x{index}")
        job = await finish_failed(app, job_id, ray_message, tmp_path)
        assert job.status == JobStatus.FAILED.value
        assert job.message.startswith("Job entrypoint command failed with exit code 1"), job.message
        assert SECRET not in job.message

        seen = await client.get(f"/api/v1/jobs/{job_id}/", headers=alice.headers)
        assert SECRET not in seen.text
        logs = await client.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)
        assert logs.status_code == 200
        assert "starting the solver" in logs.json()["logs"]
        assert SECRET not in logs.text
        provider = await client.get(f"/api/v1/jobs/{job_id}/provider-logs/", headers=carol_admin.headers)
        assert SECRET in provider.json()["logs"]
        assert f"still private {SECRET}" in provider.json()["logs"]


async def test_a_users_own_function_keeps_its_whole_message(
    app: FastAPI, alice: TestUser, tmp_path: Path
) -> None:
    own = await add_program(app, alice, "mine")
    job_id = await add_job(app, alice, own, status="RUNNING", ray_submission_id="gw-own")
    job = await finish_failed(app, job_id, RAY_MESSAGES[0], tmp_path)
    assert job.message == f"Job entrypoint command failed with exit code 1: RuntimeError: [PRIVATE] {SECRET}"
