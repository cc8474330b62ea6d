"""Tenant isolation on real sandboxed Ray heads: a hostile job of one tenant finds nothing of another's.

The gateway here runs with nothing configured but a database: no GATEWAY_RAY_ADDRESS, so every tenant gets
a bubblewrap-sandboxed Ray head of its own, started on demand.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from serverless_gateway.config import Settings
from serverless_gateway.engine.clusters.local import LocalClusters
from serverless_gateway.engine.clusters.sandbox import sandbox_problem
from serverless_gateway.engine.local_ray import LocalRayHead, free_port
from serverless_gateway.engine.runtime import EngineRuntime
from serverless_gateway.models import JobStatus, RayCluster
from tests.api.programs_support import grant, make_provider
from tests.conftest import TestUser
from tests.engine.conftest import (
    LiveGateway,
    engine_settings_for,
    job_row,
    run_job,
    serve_app,
    upload,
    wait_status,
)

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        sandbox_problem() is not None and not os.environ.get("GATEWAY_TEST_REQUIRE_SANDBOX"),
        reason=f"no sandbox here: {sandbox_problem()}",
    ),
]

# What a hostile job tries, from inside its own sandboxed head. It gets the needles reversed (so its own
# arguments and environment never contain them) and reports every place where one shows up.
HUNTER = r"""
import glob, json, os, socket, time, urllib.error, urllib.request

args = json.load(open(os.environ["ARGUMENTS_PATH"]))
needles = [n[::-1].encode() for n in args["reversed_needles"]]
victim = args["victim_submission"]
found, notes = [], {}

def check(where, data):
    for needle in needles:
        if needle in data:
            found.append(where)

# 1. every process we can see: environments and command lines
pids = glob.glob("/proc/[0-9]*")
notes["pids"] = len(pids)
for proc in pids:
    for name in ("environ", "cmdline"):
        try:
            check(f"{proc}/{name}", open(f"{proc}/{name}", "rb").read())
        except OSError:
            pass

# 2. every listening loopback port, as a Ray dashboard: list, stop the victim, submit
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        for line in open(table).read().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    except OSError:
        pass
notes["ports"] = len(ports)
own = {"Authorization": "Bearer " + os.environ.get("RAY_AUTH_TOKEN", "")}

def call(port, path, method="GET", body=None, headers=None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read(2_000_000)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(100_000)
    except Exception:
        return None, b""

listed, stopped, submitted = [], [], []
for port in sorted(ports):
    for headers in (None, own):
        status, body = call(port, "/api/jobs/", headers=headers)
        if status == 200:
            check(f"jobs list on port {port}", body)
            try:
                jobs = json.loads(body)
            except ValueError:
                jobs = None  # not a job API (a metrics exporter answers any path)
            if isinstance(jobs, list) and any(isinstance(j, dict) and j.get("submission_id") == victim for j in jobs):
                listed.append(port)
        status, _ = call(port, f"/api/jobs/{victim}/stop", "POST", b"{}", headers)
        if status == 200:
            stopped.append(port)
        status, _ = call(port, "/api/jobs/", "POST", json.dumps({"entrypoint": "echo pwned"}).encode(), headers)
        if status == 200:
            submitted.append(port)
notes.update(listed=listed, stopped=stopped, submitted=sorted(set(submitted)))

# 3. the disk: above the working dir and DATA_PATH, temp dirs, homes, the gateway's usual places
roots = {"/tmp", "/root", "/home", "/run", "/var/run", "/var/lib/postgresql", "/work", *args["extra_paths"]}
for start in (os.getcwd(), os.environ.get("DATA_PATH", "/")):
    path = os.path.abspath(start)
    while path != "/":
        path = os.path.dirname(path)
        roots.add(path if path != "/" else "/srv")
deadline, seen = time.monotonic() + 25, 0
sockets = []
for root in sorted(roots):
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev", "site-packages", ".venv", ".git")]
        for name in files:
            full = os.path.join(base, name)
            if name.startswith(".s.PGSQL"):
                sockets.append(full)
                continue
            seen += 1
            try:
                if os.path.isfile(full) and not os.path.islink(full) and os.path.getsize(full) < 2_000_000:
                    check(full, open(full, "rb").read())
            except OSError:
                pass
        if time.monotonic() > deadline:
            break
notes["files_read"] = seen

# 4. the database's unix sockets
connected = []
for path in sockets + ["/run/postgresql/.s.PGSQL.5432", "/var/run/postgresql/.s.PGSQL.5432", *args["db_sockets"]]:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(path)
            connected.append(path)
    except OSError:
        pass
notes["db_sockets_connected"] = connected

with open(os.environ["RESULTS_PATH"], "w") as out:
    json.dump({"found": sorted(set(found)), "notes": notes}, out)
"""

VICTIM = """
import json, os, time
arguments = json.load(open(os.environ["ARGUMENTS_PATH"]))
ok = os.environ.get("VICTIM_SECRET") == arguments["expect_env"] and "secret" in arguments
print("victim ready ok=" + str(ok), flush=True)
time.sleep(float(arguments.get("sleep", 60)))
"""

SLEEPER = "import time, sys\ntime.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 3)\nprint('slept')\n"


@pytest.fixture(scope="module")
async def isolated(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveGateway]:
    """A gateway with no Ray address: each tenant gets a sandboxed head (at most 4, one CPU each)."""
    port = free_port()
    engine_settings = engine_settings_for(
        settings,
        ray_address=None,
        port=port,
        data_dir=tmp_path_factory.mktemp("isolated-data"),
        isolation="required",
        max_clusters=4,
        cluster_num_cpus=1,
        cluster_idle_seconds=600.0,
        cluster_spares=0,
    )
    gateway = await serve_app(engine_settings, port)
    yield gateway
    await gateway.stop()


def local_of(gateway: LiveGateway) -> LocalClusters:
    engine = gateway.state.engine
    assert isinstance(engine, EngineRuntime)
    assert engine.clusters.local is not None
    return engine.clusters.local


@pytest.fixture
async def igw(isolated: LiveGateway, quiet_live: None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=isolated.url, timeout=60) as http:
        yield http


async def registry(gateway: LiveGateway) -> list[RayCluster]:
    async with gateway.state.sessionmaker() as session:
        return list((await session.scalars(select(RayCluster))).all())


async def test_a_hostile_job_finds_nothing_of_another_tenant_or_of_the_gateway(
    ray_head: LocalRayHead,
    isolated: LiveGateway,
    igw: httpx.AsyncClient,
    make_user,
    alice: TestUser,
    bob: TestUser,  # type: ignore[no-untyped-def]
) -> None:
    needles = {
        "argument": f"arg-secret-{uuid.uuid4().hex}",
        "env": f"env-secret-{uuid.uuid4().hex}",
        "file": f"file-secret-{uuid.uuid4().hex}",
        "provider code": f"provider-code-{uuid.uuid4().hex}",
    }
    # Alice: a sleeping job with secret arguments, a secret env var and a private file.
    await upload(igw, alice, "victim", {"main.py": VICTIM}, env_vars=json.dumps({"VICTIM_SECRET": needles["env"]}))
    uploaded = await igw.post(
        "/api/v1/files/upload/",
        params={"function": "victim"},
        headers=alice.headers,
        files={"file": ("private.txt", needles["file"].encode())},
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    victim_id = await run_job(
        igw, alice, "victim", {"secret": needles["argument"], "expect_env": needles["env"], "sleep": 90}
    )
    # A provider's function that Bob may run: its code and env var are the provider's, not Bob's.
    carol = await make_user("carol")
    await make_provider(isolated.app, "acme", carol)
    provider_code = f"MARKER = {needles['provider code']!r}\nimport time\ntime.sleep(60)\n"
    await upload(igw, carol, "secret-sauce", {"main.py": provider_code}, provider="acme")
    await grant(isolated.app, title="secret-sauce", provider="acme", user=bob, level="run")
    consumer = await igw.post(
        "/api/v1/programs/run/",
        headers=bob.headers,
        json={"title": "secret-sauce", "provider": "acme", "arguments": {}},
    )
    assert consumer.status_code in (200, 201), consumer.text
    consumer_id = uuid.UUID(consumer.json()["id"])

    victim = await wait_status(isolated.state, victim_id, {JobStatus.RUNNING}, timeout=180)
    await wait_status(isolated.state, consumer_id, {JobStatus.RUNNING}, timeout=180)
    assert victim.cluster_id is not None

    # Bob's own hostile program: it runs on Bob's own head, apart from both.
    data_dir = str(isolated.state.settings.data_dir.resolve())
    await upload(igw, bob, "hunter", {"main.py": HUNTER})
    hunter_id = await run_job(
        igw,
        bob,
        "hunter",
        {
            "reversed_needles": [value[::-1] for value in needles.values()],
            "victim_submission": f"gw-{victim_id}",
            "extra_paths": [data_dir, str(isolated.state.settings.resolved_storage_url.removeprefix("file://"))],
            "db_sockets": [f"{data_dir}/postgres/.s.PGSQL.5432"],
        },
    )
    hunter = await wait_status(isolated.state, hunter_id, {JobStatus.SUCCEEDED}, timeout=240)
    result = (await igw.get(f"/api/v1/jobs/{hunter_id}/result/", headers=bob.headers)).json()["result"]
    report = json.loads(result)

    assert report["found"] == [], report
    notes = report["notes"]
    assert notes["pids"] < 60, notes  # its own PID namespace: its head's processes only
    assert notes["ports"] > 5, notes  # it did see (and try) the other heads' and the gateway's ports
    assert notes["listed"] == [], notes
    assert notes["stopped"] == [], notes
    assert notes["files_read"] > 0, notes
    assert notes["db_sockets_connected"] == [], notes
    own_head = next(row for row in await registry(isolated) if row.id == hunter.cluster_id)
    assert own_head.address is not None
    # Its own head takes its submissions; so does the test session's shared head, which (like any
    # GATEWAY_RAY_ADDRESS cluster started without RAY_AUTH_MODE=token) is one open trust domain on purpose.
    allowed = {int(own_head.address.rsplit(":", 1)[1]), ray_head.dashboard_port}
    assert set(notes["submitted"]) <= allowed, notes

    status = (await igw.get("/api/v1/status/", headers=bob.headers)).json()
    assert status["isolation"] == "each tenant's jobs run on a sandboxed Ray head of its own", status
    # Three tenants, three heads: Alice's own, Bob's own, and (Bob, acme).
    clusters = {victim.cluster_id, hunter.cluster_id, (await job_row(isolated.state, consumer_id)).cluster_id}
    assert len(clusters) == 3
    assert (await job_row(isolated.state, victim_id)).status == JobStatus.RUNNING.value  # untouched
    logs = (await igw.get(f"/api/v1/jobs/{victim_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "victim ready ok=True" in logs  # its token, arguments and env var did reach it
    for job_id, user in ((victim_id, alice), (consumer_id, bob)):
        await igw.post(f"/api/v1/jobs/{job_id}/stop/", headers=user.headers, json={})


async def test_secrets_appear_in_no_ray_record(isolated: LiveGateway, igw: httpx.AsyncClient, alice: TestUser) -> None:
    secret_arg, secret_env = f"arg-{uuid.uuid4().hex}", f"env-{uuid.uuid4().hex}"
    await upload(igw, alice, "quiet", {"main.py": VICTIM}, env_vars=json.dumps({"VICTIM_SECRET": secret_env}))
    job_id = await run_job(igw, alice, "quiet", {"secret": secret_arg, "expect_env": secret_env, "sleep": 1})
    job = await wait_status(isolated.state, job_id, {JobStatus.SUCCEEDED}, timeout=180)
    logs = (await igw.get(f"/api/v1/jobs/{job_id}/logs/", headers=alice.headers)).json()["logs"]
    assert "victim ready ok=True" in logs
    head = next(row for row in await registry(isolated) if row.id == job.cluster_id)
    # Ray's own records of the cluster: job list (kept: the gateway deletes finished jobs) and Ray's logs.
    texts = []
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {head.token}"}) as ray:
        texts.append((await ray.get(f"{head.address}/api/jobs/")).text)
    logs_dir = local_of(isolated)._by_id[head.id].head.spec.temp_dir / "session_latest" / "logs"
    for path in logs_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 20_000_000:
            texts.append(path.read_text(errors="replace"))
    everything = "\n".join(texts)
    assert secret_arg not in everything
    assert secret_env not in everything
    assert "gwjob_" not in everything  # no job token
    assert alice.name not in everything or "gateway_user" not in everything


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def test_at_the_cap_new_tenants_wait_then_take_the_least_recently_used_idle_head(
    isolated: LiveGateway,
    igw: httpx.AsyncClient,
    make_user,  # type: ignore[no-untyped-def]
) -> None:
    local = local_of(isolated)
    # Start from no heads: let every idle one stop.
    local.idle_seconds = 0.1
    await wait_for(lambda: _no_heads(local), 60, "idle heads to stop")
    local.idle_seconds = 600.0
    local.max_clusters = 1
    try:
        first, second = await make_user("dora"), await make_user("erin")
        for user in (first, second):
            await upload(igw, user, "nap", {"main.py": SLEEPER})
        first_job = await run_job(igw, first, "nap", {})
        await wait_status(isolated.state, first_job, {JobStatus.RUNNING}, timeout=180)
        second_job = await run_job(igw, second, "nap", {})
        await asyncio.sleep(2.5)
        waiting = await job_row(isolated.state, second_job)
        assert waiting.status == JobStatus.QUEUED.value
        assert waiting.message is not None
        assert "GATEWAY_MAX_CLUSTERS" in waiting.message
        done = await wait_status(isolated.state, second_job, {JobStatus.SUCCEEDED}, timeout=240)
        first_row = await job_row(isolated.state, first_job)
        assert first_row.status == JobStatus.SUCCEEDED.value
        assert done.cluster_id != first_row.cluster_id
        ids = {row.id for row in await registry(isolated)}
        assert first_row.cluster_id not in ids  # the idle head made room
        # Idle stop: the last head stops once idle past GATEWAY_CLUSTER_IDLE_SECONDS.
        local.idle_seconds = 1.0
        await wait_for(lambda: _no_heads(local), 60, "the idle head to stop")
        assert done.cluster_id not in {row.id for row in await registry(isolated)}
    finally:
        local.max_clusters = 4
        local.idle_seconds = 600.0


async def _no_heads(local: LocalClusters) -> bool:
    return not local._by_id and not local._stopping


async def test_a_pending_job_says_its_cluster_is_starting(
    isolated: LiveGateway,
    igw: httpx.AsyncClient,
    make_user,  # type: ignore[no-untyped-def]
) -> None:
    newcomer = await make_user("fred")
    await upload(igw, newcomer, "nap", {"main.py": SLEEPER})
    job_id = await run_job(igw, newcomer, "nap", {})
    deadline = time.monotonic() + 10
    messages = set()
    while time.monotonic() < deadline:
        body = (await igw.get(f"/api/v1/jobs/{job_id}/", headers=newcomer.headers)).json()
        messages.add((body["status"], body.get("message") or ""))
        if body["status"] != "QUEUED":
            break
        await asyncio.sleep(0.05)
    assert ("PENDING", "starting a Ray cluster for this job") in messages or any(
        status == "PENDING" and "starting a Ray cluster" in message for status, message in messages
    ), messages
    await wait_status(isolated.state, job_id, {JobStatus.SUCCEEDED}, timeout=240)


async def test_a_new_tenant_gets_the_spare_head_at_once(
    isolated: LiveGateway,
    igw: httpx.AsyncClient,
    make_user,  # type: ignore[no-untyped-def]
) -> None:
    local = local_of(isolated)
    local.spares = 1
    try:
        await wait_for(lambda: _spare_ready(local), 180, "the spare head")
        spare_id = next(e.cluster_id for e in local._by_id.values() if e.tenant is None)
        newcomer = await make_user("gina")
        await upload(igw, newcomer, "nap", {"main.py": SLEEPER})
        job_id = await run_job(igw, newcomer, "nap", {"x": 1})
        job = await wait_status(isolated.state, job_id, {JobStatus.RUNNING, JobStatus.SUCCEEDED}, timeout=120)
        assert job.cluster_id == spare_id
        assert job.message != "starting a Ray cluster for this job"
        await wait_status(isolated.state, job_id, {JobStatus.SUCCEEDED}, timeout=120)
        # A new spare is started for the next newcomer, with a token of its own.
        await wait_for(lambda: _spare_ready(local), 180, "the next spare head")
        tokens = {e.head.spec.token for e in local._by_id.values()}
        assert len(tokens) == len(local._by_id)
    finally:
        local.spares = 0


async def _spare_ready(local: LocalClusters) -> bool:
    return any(e.tenant is None and e.ready.is_set() and e.error is None for e in local._by_id.values())
