"""A job's launcher reports the entrypoint's end: the gateway finishes the job at once, but its running slot
is freed only when Ray agrees, and a job that lies about its end is stopped on Ray."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from serverless_gateway.engine import sync as sync_module
from serverless_gateway.models import JobStatus
from serverless_gateway.repositories import engine as repo
from tests.conftest import TestUser
from tests.engine.conftest import LiveGateway, job_row, run_job, upload, wait_logs_stored, wait_status

pytestmark = pytest.mark.ray

LIAR = """
import json, os, time, urllib.request
print("printed before the end was reported", flush=True)
request = urllib.request.Request(
    os.environ["ENV_JOB_GATEWAY_HOST"] + "/api/v1/jobs/" + os.environ["ENV_JOB_ID_GATEWAY"] + "/ended/",
    data=json.dumps({"exit_code": 0}).encode(), method="POST",
    headers={"Authorization": "Bearer " + os.environ["ENV_JOB_GATEWAY_TOKEN"], "Content-Type": "application/json"},
)
print("claimed the end:", urllib.request.urlopen(request).status, flush=True)
time.sleep(120)
"""


async def test_a_reported_end_finishes_the_job_and_ray_confirms_it_later(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    program = "import json, os\nprint('done early')\njson.dump({'n': 7}, open(os.environ['RESULTS_PATH'], 'w'))\n"
    await upload(gw, alice, "quick", {"main.py": program})
    job_id = await run_job(gw, alice, "quick")
    job = await wait_status(live.state, job_id, {JobStatus.SUCCEEDED}, timeout=120)
    assert job.result is not None or job.result_key is not None
    deadline = time.monotonic() + 30
    while not (await job_row(live.state, job_id)).ray_confirmed:
        assert time.monotonic() < deadline, "Ray never confirmed the reported end"
        await asyncio.sleep(0.2)
    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "done early" in logs


async def test_a_failure_is_left_to_rays_verdict_with_its_exit_code(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    await upload(gw, alice, "exit3", {"main.py": "import sys\nprint('bye')\nsys.exit(3)\n"})
    job_id = await run_job(gw, alice, "exit3")
    job = await wait_status(live.state, job_id, {JobStatus.FAILED}, timeout=120)
    assert job.message is not None
    assert "exit code 3" in job.message


async def test_a_job_that_lies_about_its_end_keeps_its_slot_until_it_is_stopped_on_ray(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "REPORTED_END_GRACE", sync_module.timedelta(seconds=3))
    await upload(gw, alice, "liar", {"main.py": LIAR})
    job_id = await run_job(gw, alice, "liar")
    job = await wait_status(live.state, job_id, {JobStatus.SUCCEEDED}, timeout=120)
    assert not job.ray_confirmed
    # Final at once, its log readable at once: read from Ray until the copy stored right after is there.
    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "printed before the end was reported" in logs
    window = await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers, params={"offset": 0})
    assert "printed before the end was reported" in window.json()["logs"]
    stored = await wait_logs_stored(live.state, job_id)
    assert not stored.ray_confirmed
    assert "printed before the end was reported" in (await live.state.storage.get_bytes(stored.logs_key)).decode()
    async with live.state.sessionmaker() as session:
        held = {row.id for row in await repo.load_active(session)}
    assert job_id in held  # still counted against the running caps
    deadline = time.monotonic() + 60
    while not (await job_row(live.state, job_id)).ray_confirmed:
        assert time.monotonic() < deadline, "the lying job was never stopped on Ray"
        await asyncio.sleep(0.3)
    assert (await job_row(live.state, job_id)).status == JobStatus.SUCCEEDED.value  # terminal stays final
