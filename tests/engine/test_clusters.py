"""Cluster providers on real sandboxed heads: socket paths whatever the data dir, re-adoption, fail-fast starts,
cancelled starts, the shared fallback, and operators' static clusters assigned to users and groups."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from serverless_gateway.config import Settings
from serverless_gateway.engine.clusters import ClusterFailed, isolation
from serverless_gateway.engine.clusters import sandbox as sandbox_module
from serverless_gateway.engine.clusters.isolation import IsolationUnavailable, isolation_mode
from serverless_gateway.engine.clusters.local import LocalClusters
from serverless_gateway.engine.clusters.sandbox import (
    AF_UNIX_MAX,
    SandboxedHead,
    default_hidden,
    head_root,
    new_spec,
    sandbox_command,
    sandbox_problem,
)
from serverless_gateway.engine.runtime import private_paths
from serverless_gateway.models import ClusterState, JobStatus, RayCluster
from serverless_gateway.repositories import clusters as cluster_repo
from serverless_gateway.services import accounts
from serverless_gateway.services.clusters import shared_static_clusters
from tests.engine.conftest import LiveGateway, run_job, upload, wait_status

needs_sandbox = pytest.mark.skipif(
    sandbox_problem() is not None and not os.environ.get("GATEWAY_TEST_REQUIRE_SANDBOX"),
    reason=f"no sandbox here: {sandbox_problem()}",
)
CLI = Path(sys.executable).with_name("serverless-gateway")
SLEEPER = "import sys, time\ntime.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 8)\nprint('slept')\n"


def head_processes(head: SandboxedHead) -> list[psutil.Process]:
    if head.spec.pid is None:
        return []
    try:
        outer = psutil.Process(head.spec.pid)
        return [p for p in [outer, *outer.children(recursive=True)] if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def data_dir_of_length(root: Path, length: int) -> Path:
    """A directory whose absolute path is exactly `length` characters (or the shortest possible under root)."""
    base = str(root.resolve())
    path = Path(base)
    while len(str(path)) < length:
        room = length - len(str(path)) - 1
        path = path / ("d" * max(1, min(room, 40)))
    return path


def test_head_sockets_fit_whatever_the_temp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / ("t" * 90)))
    (tmp_path / ("t" * 90)).mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert str(head_root()) == "/tmp"  # a long TMPDIR is not used for heads
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", "/tmp")
    spec = new_spec()
    try:
        deepest = f"{spec.temp_dir}/session_2026-12-01_20-25-00_123456_1234567/sockets/dash_MetricsHead"
        assert len(deepest) <= AF_UNIX_MAX
    finally:
        spec.head_dir.rmdir()


def test_the_sandbox_hides_the_gateways_files_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://secret@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    spec = new_spec(hidden=default_hidden(tmp_path / "data"))
    try:
        command = sandbox_command(spec)
    finally:
        spec.head_dir.rmdir()
    joined = " ".join(command)
    assert "--clearenv" in command
    assert "secret@db" not in joined
    assert "s3cr3t" not in joined
    assert "--unshare-pid" in command
    assert ["--tmpfs", "/tmp"] == command[command.index("/tmp") - 1 : command.index("/tmp") + 1]
    assert "--tmpfs" in command
    cwd = str(Path.cwd().resolve())
    assert cwd in command or cwd.startswith("/tmp")  # the gateway's working dir is hidden too (/tmp is private)
    assert command.index(str(spec.head_dir)) > command.index("/tmp")  # its own dir bound back after the tmpfs


@needs_sandbox
def test_a_file_storage_and_a_database_socket_dir_outside_the_data_dir_are_hidden(
    settings: Settings, tmp_path: Path
) -> None:
    # Outside /tmp (which every head gets private anyway): as an operator's /srv/storage or /var/run/pg would be.
    outside = Path(tempfile.mkdtemp(prefix="gw-hidden-", dir="/var/tmp"))
    try:
        storage, sockets = outside / "storage", outside / "pg-sockets"
        for place in (storage, sockets):
            place.mkdir()
            (place / "secret.txt").write_text("tenant file")
        configured = settings.model_copy(
            update={
                "storage_url": f"file://{storage}",
                "database_url": f"postgresql+asyncpg://gw@/gateway?host={sockets}",
            }
        )
        paths = private_paths(configured)
        assert set(paths) == {storage, sockets}
        spec = new_spec(hidden=default_hidden(tmp_path / "data", paths))
        try:
            command = sandbox_command(spec)
            shell = [*command[: command.index("--")], "--", "/bin/sh", "-c"]
            for place in (storage, sockets):
                seen = subprocess.run(
                    [*shell, f"cat {place}/secret.txt"], capture_output=True, text=True, timeout=30, check=False
                )
                assert seen.returncode != 0, seen.stdout
                assert "tenant file" not in seen.stdout
            # The same command does read what is not hidden: the check above is not failing for another reason.
            (outside / "visible.txt").write_text("plain")
            seen = subprocess.run(
                [*shell, f"cat {outside}/visible.txt"], capture_output=True, text=True, timeout=30, check=False
            )
            assert seen.stdout == "plain", seen.stderr
        finally:
            spec.head_dir.rmdir()
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_isolation_falls_back_loudly_or_refuses(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setattr(isolation, "_problem", lambda: "bubblewrap (`bwrap`) is not installed")
    mode, why = isolation_mode(settings.model_copy(update={"isolation": "auto"}))
    assert mode == "shared"
    assert why is not None
    assert "bwrap" in why
    with pytest.raises(IsolationUnavailable, match="GATEWAY_ISOLATION=shared"):
        isolation_mode(settings.model_copy(update={"isolation": "required"}))
    assert isolation_mode(settings.model_copy(update={"isolation": "shared"}))[0] == "shared"
    assert "NOT ISOLATED" in isolation.NOT_ISOLATED


def test_serve_with_isolation_required_and_no_bubblewrap_names_the_fix(database_url: str, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ray", "python", "python3"):
        target = Path(sys.executable).with_name(tool)
        if target.exists():
            (bin_dir / tool).symlink_to(target)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "RAY_"))}
    env.update(
        PATH=str(bin_dir),
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_DATA_DIR=str(tmp_path / "data"),
        GATEWAY_ISOLATION="required",
    )
    done = subprocess.run(
        [str(CLI), "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "bubblewrap" in done.stderr
    assert "GATEWAY_ISOLATION=shared" in done.stderr


@needs_sandbox
@pytest.mark.ray
async def test_heads_start_under_data_dirs_of_any_depth_and_are_readopted(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sessionmaker = _sessionmaker(settings)
    root = tmp_path_factory.mktemp("depth")
    depths = [10, 19, 64, 130]
    providers: list[LocalClusters] = []
    cluster_ids: list[uuid.UUID] = []
    for depth in depths:
        data_dir = data_dir_of_length(root, depth) if depth > len(str(root)) else Path("/tmp/" + "d" * (depth - 5))
        data_dir.mkdir(parents=True, exist_ok=True)
        local = LocalClusters(
            sessionmaker=sessionmaker, data_dir=data_dir, max_clusters=1, idle_seconds=600, num_cpus=1
        )
        providers.append(local)
        cluster_ids.append(local.place(f"user:{uuid.uuid4()}"))
    try:
        clients = await asyncio.gather(
            *(local.client(cid, timeout=240) for local, cid in zip(providers, cluster_ids, strict=True))
        )
        for client in clients:
            assert await client.list_jobs() == {}
        # A gateway killed with SIGKILL stops nothing: the next one re-adopts every head that still answers.
        for local in providers:
            await local.close(stop_heads=False)
        successor = LocalClusters(sessionmaker=sessionmaker, data_dir=root, max_clusters=8, idle_seconds=600)
        assert await successor.adopt() >= len(depths)
        for cid in cluster_ids:
            adopted = successor.client_now(cid)
            assert adopted is not None
            assert await adopted.list_jobs() == {}
        heads = [successor._by_id[cid].head for cid in cluster_ids]
        started = time.monotonic()
        await successor.close()
        assert time.monotonic() - started < 30
        for head in heads:
            assert head_processes(head) == []
            assert not head.spec.head_dir.exists()
        async with sessionmaker() as session:
            left = (await session.scalars(select(RayCluster.id).where(RayCluster.id.in_(cluster_ids)))).all()
        assert list(left) == []
    finally:
        for local in providers:
            await local.close()


@needs_sandbox
@pytest.mark.ray
async def test_a_deterministic_start_failure_fails_fast_quoting_ray_and_keeping_its_logs(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_root = Path("/tmp") / ("x" * 64)
    long_root.mkdir(exist_ok=True)
    monkeypatch.setattr(sandbox_module, "head_root", lambda: long_root)  # sockets past the AF_UNIX limit
    local = LocalClusters(
        sessionmaker=_sessionmaker(settings), data_dir=tmp_path, max_clusters=2, idle_seconds=600, num_cpus=1
    )
    started = time.monotonic()
    cluster_id = local.place(f"user:{uuid.uuid4()}")
    try:
        with pytest.raises(ClusterFailed) as failed:
            await local.client(cluster_id, timeout=240)
        elapsed = time.monotonic() - started
        message = str(failed.value)
        assert failed.value.deterministic
        assert "AF_UNIX path length cannot exceed 107 bytes" in message  # Ray's own words
        assert "TMPDIR" in message  # the fix
        kept = Path(message.rsplit("kept in ", 1)[1].rstrip(")"))
        assert kept.is_dir()
        assert (kept / "ray-start.log").exists()
        assert elapsed < 60  # one try, not six
    finally:
        await local.close()
        import shutil

        shutil.rmtree(long_root, ignore_errors=True)


@needs_sandbox
@pytest.mark.ray
async def test_a_start_interrupted_by_shutdown_stops_within_seconds(settings: Settings, tmp_path: Path) -> None:
    local = LocalClusters(
        sessionmaker=_sessionmaker(settings), data_dir=tmp_path, max_clusters=2, idle_seconds=600, num_cpus=1
    )
    cluster_id = local.place(f"user:{uuid.uuid4()}")
    head = local._by_id[cluster_id].head
    await asyncio.sleep(2.0)  # `ray start` is under way
    assert head_processes(head) != []
    started = time.monotonic()
    await local.close()
    assert time.monotonic() - started < 15
    assert head_processes(head) == []


def _sessionmaker(settings: Settings):  # type: ignore[no-untyped-def]
    from serverless_gateway.db import create_engine, create_sessionmaker

    assert settings.database_url is not None
    return create_sessionmaker(create_engine(settings.database_url, pool_size=2))


def _cli(database_url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = database_url
    done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_sandbox
@pytest.mark.ray
async def test_static_clusters_take_their_assigned_tenants_and_the_rest_use_the_ray_address(
    live: LiveGateway,
    gw: httpx.AsyncClient,
    database_url: str,
    tmp_path: Path,
    make_user,  # type: ignore[no-untyped-def]
) -> None:
    heads = [SandboxedHead(new_spec(num_cpus=1, hidden=default_hidden(tmp_path))) for _ in range(2)]
    try:
        await asyncio.gather(*(head.start() for head in heads))
        for index, head in enumerate(heads):
            token_file = tmp_path / f"token-{index}"
            token_file.write_text(head.spec.token + "\n")
            _cli(
                database_url,
                "cluster",
                "add",
                f"team-{index}",
                "--address",
                head.spec.address,
                "--token-file",
                str(token_file),
            )
        first, second, other = await make_user("sam"), await make_user("tess"), await make_user("uma")
        async with live.state.sessionmaker.begin() as session:
            await accounts.create_group(session, name="team-one")
            await accounts.add_user_to_group(session, username="tess", group_name="team-one")
        _cli(database_url, "cluster", "assign", "team-0", "--user", "sam")
        _cli(database_url, "cluster", "assign", "team-1", "--group", "team-one")
        async with live.state.sessionmaker() as session:  # what serve names as one trust domain at start
            assert await shared_static_clusters(session) == ["team-1"]  # a group's; team-0 serves sam alone
        listing = json.loads(_cli(database_url, "cluster", "list", "--json"))
        assert {row["name"] for row in listing} >= {"team-0", "team-1"}
        assert all(row["token"] in ("set", "none") for row in listing)
        assert heads[0].spec.token not in json.dumps(listing)

        jobs: dict[str, uuid.UUID] = {}
        for user in (first, second, other):
            await upload(gw, user, "nap", {"main.py": SLEEPER})
            jobs[user.name] = await run_job(gw, user, "nap", {})
        for name, index in (("sam", 0), ("tess", 1)):
            await wait_status(live.state, jobs[name], {JobStatus.RUNNING}, timeout=180)
            async with httpx.AsyncClient(
                timeout=10, headers={"Authorization": f"Bearer {heads[index].spec.token}"}
            ) as ray:
                listed = (await ray.get(f"{heads[index].spec.address}/api/jobs/")).json()
            assert f"gw-{jobs[name]}" in {job["submission_id"] for job in listed}
        for name in jobs:
            done = await wait_status(live.state, jobs[name], {JobStatus.SUCCEEDED}, timeout=180)
            assert (done.cluster_id is None) == (name == "uma")
        _cli(database_url, "cluster", "remove", "team-0")
        assert "team-0" not in _cli(database_url, "cluster", "list")
    finally:
        await asyncio.gather(*(head.stop() for head in heads))
        async with live.state.sessionmaker.begin() as session:
            for row in await session.scalars(select(RayCluster).where(RayCluster.name.in_(["team-0", "team-1"]))):
                await session.delete(row)


def test_a_registry_row_is_another_gateways_only_while_that_gateway_lives() -> None:
    from serverless_gateway.engine.clusters.local import owned_elsewhere, owner_id

    assert not owned_elsewhere(owner_id())
    assert not owned_elsewhere(None)
    assert owned_elsewhere("another-host.example:4242:1700000000")
    init = psutil.Process(1)
    assert owned_elsewhere(f"{socket.gethostname()}:1:{int(init.create_time())}")  # a live process here
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not owned_elsewhere(f"{socket.gethostname()}:{dead.pid}:{int(time.time())}")  # gone: ours to clean up


async def test_adoption_leaves_the_heads_of_another_live_gateway_alone(settings: Settings, tmp_path: Path) -> None:
    sessionmaker = _sessionmaker(settings)
    cluster_id = uuid.uuid4()
    async with sessionmaker.begin() as session:
        await cluster_repo.add_local(
            session,
            cluster_id=cluster_id,
            tenant=f"user:{uuid.uuid4()}",
            token="t",
            address="http://127.0.0.1:9",
            details={"head_dir": str(tmp_path / "gwh-x"), "ports": {"gcs": 1, "dashboard": 9}},
            owner="another-host.example:4242:1700000000",
        )
        await cluster_repo.set_state(session, cluster_id, ClusterState.RUNNING)
    local = LocalClusters(sessionmaker=sessionmaker, data_dir=tmp_path, max_clusters=1, idle_seconds=600)
    try:
        assert await local.adopt() == 0
        async with sessionmaker() as session:
            assert await session.get(RayCluster, cluster_id) is not None  # neither adopted nor cleaned up
    finally:
        async with sessionmaker.begin() as session:
            await cluster_repo.remove(session, cluster_id)
