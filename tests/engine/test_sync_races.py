"""Two writers finishing one job (two replicas, or a late pass): the loser never overwrites what the winner stored."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import cast

from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.engine.clusters.router import Clusters
from serverless_gateway.engine.dispatcher import Dispatcher
from serverless_gateway.engine.ray_client import RayJobNotFound, RayJobs, RayJobState
from serverless_gateway.engine.sync import StatusSync
from serverless_gateway.engine.workdirs import Workdirs
from serverless_gateway.models import JobStatus
from serverless_gateway.repositories.engine import ActiveJob
from tests.api.jobs_support import add_job, add_program, job_columns
from tests.conftest import TestUser


class ForgetfulRay:
    """Ray as two replicas see it: the first reads the job's log, then the job is deleted (the second gets 404)."""

    def __init__(self, logs: str):
        self._logs: str | None = logs

    async def logs(self, submission_id: str, max_bytes: int, *, wait_end: bool = True) -> str:
        if self._logs is None:
            raise RayJobNotFound(f"Job {submission_id} does not exist")
        return self._logs

    async def delete(self, submission_id: str) -> None:
        self._logs = None


async def test_a_late_second_finish_keeps_the_stored_logs(
    app: FastAPI, client: AsyncClient, alice: TestUser, tmp_path: Path
) -> None:
    state = app.state.gateway
    program = await add_program(app, alice, "printer")
    job_id = await add_job(app, alice, program, status="RUNNING", ray_submission_id="gw-race")
    ray = cast(RayJobs, ForgetfulRay("the real output\n"))
    clusters = Clusters(sessionmaker=state.sessionmaker, shared=ray, local=None)
    dispatcher = Dispatcher(state=state, clusters=clusters, workdirs=Workdirs(tmp_path, state.storage))
    replicas = [StatusSync(state=state, clusters=clusters, dispatcher=dispatcher) for _ in range(2)]
    job = await job_columns(app, job_id)
    # Both replicas saw the job RUNNING on Ray's SUCCEEDED in the same pass; the second one is late.
    row = ActiveJob(
        id=job_id,
        status=JobStatus.RUNNING,
        submission_id="gw-race",
        stop_requested=False,
        submitted_at=job.created_at,
        updated_at=job.updated_at,
    )
    ended = RayJobState(submission_id="gw-race", status="SUCCEEDED", message=None)
    for replica in replicas:
        await replica._finish(row, ended)
    finished = await job_columns(app, job_id)
    assert finished.status == JobStatus.SUCCEEDED.value
    logs = await client.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)
    assert logs.status_code == 200
    assert "the real output" in logs.json()["logs"]
    assert uuid.UUID(finished.logs_key.split("/")[1]) == job_id
