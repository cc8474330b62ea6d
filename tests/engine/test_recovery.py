"""Recovery: the gateway killed with SIGKILL while jobs run, and the Ray cluster restarted under the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from serverless_gateway.auth import hash_token, new_job_token
from serverless_gateway.engine.local_ray import LocalRayHead, free_port
from serverless_gateway.engine.runtime import EngineRuntime
from serverless_gateway.engine.submission import submission_id_for
from serverless_gateway.engine.sync import LOST_REASON
from serverless_gateway.models import Job, JobStatus, Program
from tests.conftest import ROOT, TestUser
from tests.engine.conftest import (
    LiveGateway,
    engine_settings_for,
    job_row,
    run_job,
    serve_app,
    upload,
    wait_all_terminal,
    wait_status,
)

pytestmark = pytest.mark.ray

NAP_PROGRAM = """
import json, os, time
with open(os.environ["ARGUMENTS_PATH"]) as handle:
    arguments = json.load(handle)
with open(os.path.join({marks!r}, os.environ["ENV_JOB_ID_GATEWAY"]), "a") as handle:
    handle.write("ran\\n")
time.sleep(arguments.get("nap", 0))
with open(os.environ["RESULTS_PATH"], "w") as handle:
    json.dump({{"napped": arguments.get("nap", 0)}}, handle)
"""


class GatewayProcess:
    """The gateway in its own process, so that it can be killed for real."""

    def __init__(self, env: dict[str, str], port: int, log: Path):
        self.env, self.port, self.log = env, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "--factory", "tests.engine.gateway_app:make_app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                assert self.process is not None
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/readiness/")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the gateway process never became ready"
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def gateway_process(live: LiveGateway, ray_head: LocalRayHead, tmp_path: Path) -> Iterator[GatewayProcess]:
    port = free_port()
    settings = live.state.settings
    assert settings.database_url is not None
    assert ray_head.dashboard_url is not None
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_RAY_ADDRESS": ray_head.dashboard_url,
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_STORAGE_URL": settings.resolved_storage_url,
        "GATEWAY_SYNC_INTERVAL_SECONDS": "0.5",
        "GATEWAY_SWEEP_INTERVAL_SECONDS": "2",
        "GATEWAY_TOKEN_CACHE_SECONDS": "0",
    }
    process = GatewayProcess(env, port, tmp_path / "gateway.log")
    yield process
    process.terminate()


@pytest.mark.usefixtures("quiet_live")
async def test_sigkill_while_jobs_run_then_restart(
    live: LiveGateway, gateway_process: GatewayProcess, alice: TestUser, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    gateway_process.start()
    await gateway_process.wait_ready()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_process.port}", timeout=30) as gw:
        await upload(gw, alice, "nap", {"main.py": NAP_PROGRAM.format(marks=str(marks))})
        running = [await run_job(gw, alice, "nap", {"nap": 8}) for _ in range(3)]
        for job_id in running:
            await wait_status(live.state, job_id, {JobStatus.RUNNING}, timeout=120)

        gateway_process.kill()

        # A job claimed just before the crash, whose submission never reached Ray.
        crashed = uuid.uuid4()
        async with live.state.sessionmaker.begin() as session:
            program = await session.get(Program, (await job_row(live.state, running[0])).program_id)
            assert program is not None
            session.add(
                Job(
                    id=crashed,
                    program_id=program.id,
                    author_id=alice.id,
                    status=JobStatus.PENDING.value,
                    arguments='{"nap": 0}',
                    ray_submission_id=submission_id_for(crashed),
                    token_hash=hash_token(new_job_token()),
                )
            )
        async with live.state.sessionmaker.begin() as session:
            long_ago = datetime.now(UTC) - timedelta(hours=1)
            await session.execute(update(Job).where(Job.id == crashed).values(updated_at=long_ago))

        gateway_process.start()
        await gateway_process.wait_ready()
        jobs = await wait_all_terminal(live.state, [*running, crashed], timeout=180)

    by_id = {job.id: job for job in jobs}
    assert [by_id[job_id].status for job_id in running] == [JobStatus.SUCCEEDED.value] * 3
    assert all(by_id[job_id].result == '{"napped": 8}' for job_id in running)
    assert by_id[crashed].status == JobStatus.SUCCEEDED.value, by_id[crashed].message
    assert by_id[crashed].result == '{"napped": 0}'
    for job_id in [*running, crashed]:
        assert (marks / str(job_id)).read_text() == "ran\n", f"job {job_id} ran more than once"


@pytest.mark.usefixtures("quiet_live")
async def test_ray_restarted_while_jobs_are_queued(
    settings: object, alice: TestUser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    head = LocalRayHead(tmp_path_factory.mktemp("ray-restart"))
    address = await head.start()
    port = free_port()
    engine_settings = engine_settings_for(
        settings,  # type: ignore[arg-type]
        ray_address=address,
        port=port,
        data_dir=tmp_path_factory.mktemp("restart-data"),
    )
    gateway = await serve_app(engine_settings, port)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as gw:
            await upload(gw, alice, "long", {"main.py": "import time\nprint('long', flush=True)\ntime.sleep(300)\n"})
            quick = "import os\nopen(os.environ['RESULTS_PATH'], 'w').write('1')\n"
            await upload(gw, alice, "quick", {"main.py": quick})
            doomed = await run_job(gw, alice, "long")
            await wait_status(gateway.state, doomed, {JobStatus.RUNNING}, timeout=120)

            await head.stop()
            engine = gateway.state.engine
            assert isinstance(engine, EngineRuntime)
            deadline = time.monotonic() + 30
            while engine.ray_healthy:
                assert time.monotonic() < deadline, "the gateway never noticed that Ray is gone"
                await asyncio.sleep(0.2)
            # A Ray outage does not take the API away: readiness stays up, the status endpoint says it.
            assert (await gw.get("/readiness/")).status_code == 200
            status = (await gw.get("/api/v1/status/", headers=alice.headers)).json()
            assert status["engine"]["status"] == "unavailable"
            assert status["isolation"].startswith("USERS ARE NOT ISOLATED"), status  # one shared cluster

            queued = [await run_job(gw, alice, "quick") for _ in range(3)]
            await asyncio.sleep(3)
            assert {(await job_row(gateway.state, job_id)).status for job_id in queued} == {JobStatus.QUEUED.value}

            same_port = int(address.rsplit(":", 1)[1])
            restarted = LocalRayHead(tmp_path_factory.mktemp("ray-restart-2"), dashboard_port=same_port)
            await restarted.start()
            try:
                jobs = await wait_all_terminal(gateway.state, [*queued, doomed], timeout=180)
                assert (await gw.get("/readiness/")).status_code == 200
            finally:
                await restarted.stop()
    finally:
        await gateway.stop()
        await head.stop()

    by_id = {job.id: job for job in jobs}
    assert [by_id[job_id].status for job_id in queued] == [JobStatus.SUCCEEDED.value] * 3
    assert all(by_id[job_id].result == "1" for job_id in queued)
    assert by_id[doomed].status == JobStatus.FAILED.value
    assert by_id[doomed].message == LOST_REASON
