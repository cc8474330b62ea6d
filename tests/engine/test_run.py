"""Jobs run on a real Ray head: arguments in, result out, failures with their reasons in the logs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from serverless_gateway.models import JobStatus
from tests.api.programs_support import grant, make_provider
from tests.conftest import TestUser
from tests.engine.conftest import LiveGateway, add_program_row, run_job, upload, wait_logs_stored, wait_status

pytestmark = pytest.mark.ray

ARGUMENTS_PROGRAM = """
import json, os
with open(os.environ["ARGUMENTS_PATH"]) as handle:
    arguments = json.load(handle)
legacy = json.loads(os.environ["ENV_JOB_ARGUMENTS"])
assert legacy == arguments, (legacy, arguments)
with open(os.path.join(os.environ["DATA_PATH"], "made-by-job.txt"), "w") as handle:
    handle.write("written in the job")
print("adding", arguments["a"], arguments["b"])
with open(os.environ["RESULTS_PATH"], "w") as handle:
    json.dump({"sum": arguments["a"] + arguments["b"], "job": os.environ["ENV_JOB_ID_GATEWAY"]}, handle)
"""


async def test_job_reads_arguments_and_saves_result(live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser) -> None:
    await upload(gw, alice, "adder", {"main.py": ARGUMENTS_PROGRAM})
    job_id = await run_job(gw, alice, "adder", {"a": 2, "b": 40})

    job = await wait_status(live.state, job_id, {JobStatus.SUCCEEDED})

    assert json.loads(job.result or "null") == {"sum": 42, "job": str(job_id)}
    assert job.message is None  # nothing left of "preparing its runtime environment"
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.submitted_at is not None
    assert job.token_hash is None
    # The log reads the same before the stored copy is there (from Ray) and after.
    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "adding 2 40" in logs
    stored = await wait_logs_stored(live.state, job_id)
    assert stored.logs_key is not None
    assert stored.logs_key.startswith(f"logs/{job_id}/")
    assert "adding 2 40" in (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    result = await gw.get(f"/api/v1/jobs/{job_id}/result/", headers=alice.headers)
    assert json.loads(result.json()["result"]) == {"sum": 42, "job": str(job_id)}
    download = await gw.get(
        "/api/v1/files/download/", headers=alice.headers, params={"file": "made-by-job.txt", "function": "adder"}
    )
    assert download.status_code == 200, download.text
    assert download.text == "written in the job"


async def test_failing_entrypoint_fails_with_traceback(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    program = "def explode():\n    raise ValueError('boom from the job')\n\nprint('about to fail')\nexplode()\n"
    await upload(gw, alice, "exploder", {"main.py": program})
    job_id = await run_job(gw, alice, "exploder")

    job = await wait_status(live.state, job_id, {JobStatus.FAILED})

    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "about to fail" in logs
    assert "Traceback (most recent call last)" in logs
    assert "ValueError: boom from the job" in logs
    assert "in explode" in logs
    assert "serverless_gateway_job" not in logs.split("Traceback")[1].split("ValueError")[0]
    assert job.message == "Job entrypoint command failed with exit code 1: ValueError: boom from the job"
    assert job.result is None


async def test_missing_entrypoint_fails_with_reason(live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser) -> None:
    await add_program_row(live.state, alice, "no-entry", {"other.py": "print(1)\n"}, entrypoint="main.py")
    job_id = await run_job(gw, alice, "no-entry")

    job = await wait_status(live.state, job_id, {JobStatus.FAILED}, timeout=30)

    assert "main.py" in (job.message or "")
    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "entrypoint 'main.py' was not found" in logs
    assert job.submitted_at is None  # refused before Ray was asked


async def test_dependency_outside_allowlist_fails(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, tune_live: Callable[..., None]
) -> None:
    await upload(gw, alice, "wants-pkg", {"main.py": "print(1)\n"}, dependencies='["left-pad==1.0"]')
    tune_live(dependency_allowlist=["numpy"])  # the allow-list changed after the upload
    job_id = await run_job(gw, alice, "wants-pkg")

    job = await wait_status(live.state, job_id, {JobStatus.FAILED}, timeout=30)

    assert "allow-list" in (job.message or "")


async def test_result_that_is_not_json_fails_the_job(live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser) -> None:
    program = "import os\nopen(os.environ['RESULTS_PATH'], 'w').write('{not json')\n"
    await upload(gw, alice, "bad-result", {"main.py": program})
    job_id = await run_job(gw, alice, "bad-result")

    job = await wait_status(live.state, job_id, {JobStatus.FAILED})

    assert job.result is None
    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "is not valid JSON" in logs


TOKEN_PROGRAM = """
import json, os, urllib.error, urllib.request
with open(os.environ["ARGUMENTS_PATH"]) as handle:
    other = json.load(handle)["other"]
host, token = os.environ["ENV_JOB_GATEWAY_HOST"], os.environ["ENV_JOB_GATEWAY_TOKEN"]
me = os.environ["ENV_JOB_ID_GATEWAY"]

def status(path):
    request = urllib.request.Request(host + path, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code

with open(os.environ["RESULTS_PATH"], "w") as handle:
    json.dump({"own": status(f"/api/v1/jobs/{me}/"), "other": status(f"/api/v1/jobs/{other}/"), "token": token}, handle)
"""


async def test_job_token_reaches_only_its_own_job_and_ends_with_it(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    await upload(gw, alice, "quiet", {"main.py": "print('quiet')\n"})
    await upload(gw, alice, "peeker", {"main.py": TOKEN_PROGRAM})
    other = await run_job(gw, alice, "quiet")
    await wait_status(live.state, other, {JobStatus.SUCCEEDED})
    job_id = await run_job(gw, alice, "peeker", {"other": str(other)})

    job = await wait_status(live.state, job_id, {JobStatus.SUCCEEDED})

    seen = json.loads(job.result or "{}")
    assert seen["own"] == 200
    assert seen["other"] == 404  # alice's other job is invisible to this job's token
    assert seen["token"].startswith("gwjob_")
    after = await gw.get(f"/api/v1/jobs/{job_id}/", headers={"Authorization": f"Bearer {seen['token']}"})
    assert after.status_code == 401  # the token died with the job


LOGGING_PROGRAM = """
print("[PUBLIC] progress for the user")
print("[PRIVATE] provider secret")
print("plain line")
"""


async def test_public_and_private_log_lines_are_routed(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, bob: TestUser
) -> None:
    await make_provider(live.app, "acme", bob)
    await upload(gw, bob, "solver", {"main.py": LOGGING_PROGRAM}, provider="acme")
    await grant(live.app, title="solver", provider="acme", user=alice, level="run")
    response = await gw.post(
        "/api/v1/programs/run/", headers=alice.headers, json={"title": "solver", "provider": "acme", "arguments": {}}
    )
    assert response.status_code in (200, 201), response.text
    job_id = uuid.UUID(response.json()["id"])

    await wait_status(live.state, job_id, {JobStatus.SUCCEEDED})

    user_logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "progress for the user" in user_logs
    assert "[PUBLIC]" not in user_logs
    assert "provider secret" not in user_logs
    assert "plain line" in user_logs
    provider_logs = (await gw.get(f"/api/v1/jobs/{job_id}/provider-logs/", headers=bob.headers)).json()["logs"]
    assert "[PRIVATE] provider secret" in provider_logs
    assert "[PUBLIC] progress for the user" in provider_logs


async def test_stored_logs_keep_the_tail_within_the_cap(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, tune_live: Callable[..., None]
) -> None:
    tune_live(log_max_bytes=2000)
    await upload(gw, alice, "chatty", {"main.py": "for i in range(3000):\n    print(f'line {i:05d}')\n"})
    job_id = await run_job(gw, alice, "chatty")

    await wait_status(live.state, job_id, {JobStatus.SUCCEEDED})

    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert logs.startswith("[gateway] logs truncated: the first ")
    assert "line 02999" in logs
    assert "line 00000" not in logs
    assert len(logs.encode()) < 2200


UNREACHABLE_PROGRAM = """
import json, os
os.environ["ENV_JOB_GATEWAY_HOST"] = "http://127.0.0.1:9"  # the gateway cannot be reached at the end
os.environ["GATEWAY_RESULT_SEND_ATTEMPTS"] = "1"
with open(os.environ["RESULTS_PATH"], "w") as handle:
    json.dump({"delivered": "through the logs"}, handle)
"""


async def test_result_reaches_the_gateway_through_the_logs_when_the_post_fails(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    await upload(gw, alice, "cut-off", {"main.py": UNREACHABLE_PROGRAM})
    job_id = await run_job(gw, alice, "cut-off")

    job = await wait_status(live.state, job_id, {JobStatus.SUCCEEDED})

    assert json.loads(job.result or "null") == {"delivered": "through the logs"}
    logs = (await gw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "__SERVERLESS_GATEWAY_RESULT__" not in logs
    assert "could not reach the gateway" in logs


async def test_a_large_result_through_the_logs_is_kept_in_storage(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    program = UNREACHABLE_PROGRAM.replace('{"delivered": "through the logs"}', '{"big": "x" * 300_000}')
    await upload(gw, alice, "cut-off-big", {"main.py": program})
    job_id = await run_job(gw, alice, "cut-off-big")

    job = await wait_status(live.state, job_id, {JobStatus.SUCCEEDED})

    assert job.result is None, "over 256 KiB: stored, not inline"
    assert job.result_key is not None
    assert job.result_key.startswith(f"results/{job_id}/")
    answer = await gw.get(f"/api/v1/jobs/{job_id}/result/", headers=alice.headers)
    assert json.loads(answer.json()["result"]) == {"big": "x" * 300_000}


async def test_a_programs_files_are_hashed_and_uploaded_once_per_cluster(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serverless_gateway.engine import ray_client

    hashed: list[str] = []
    original = ray_client.zip_directory

    def counting(directory: str, *, include_parent_dir: bool, bundle: str | None = None) -> bytes:
        hashed.append(directory)
        return original(directory, include_parent_dir=include_parent_dir, bundle=bundle)

    monkeypatch.setattr(ray_client, "zip_directory", counting)
    # Unlike any other program of this session: its working dir is new to the cluster.
    await upload(gw, alice, "once", {"main.py": f"print('{uuid.uuid4().hex}')\n", "data.bin": b"x" * 200_000})
    jobs = [await run_job(gw, alice, "once") for _ in range(3)]
    for job_id in jobs:
        await wait_status(live.state, job_id, {JobStatus.SUCCEEDED}, timeout=120)
    program_dirs = [path for path in hashed if "programs" in path]
    assert len(program_dirs) == 1, hashed  # the first job's submission only, not one per job
