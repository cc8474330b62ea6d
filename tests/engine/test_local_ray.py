"""LocalRayHead: a private head, reused after its gateway was killed, stopped without touching other heads."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from serverless_gateway.engine import local_ray
from serverless_gateway.engine.local_ray import START_OUTPUT, STATE_FILE, TRASH_PREFIX, LocalRayHead, RayStartError
from tests.cli_support import cli_env, serving

pytestmark = pytest.mark.ray


def session_processes(session_id: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{url}/api/version")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_head_is_reused_after_its_owner_died_and_stops_alone(ray_head: LocalRayHead, tmp_path: Path) -> None:
    first = LocalRayHead(tmp_path / "ray", num_cpus=1)
    url = await first.start()
    session = first._session_id
    assert session is not None
    temp_dir = first.temp_dir
    assert temp_dir is not None
    assert temp_dir.is_dir()

    # A gateway killed with SIGKILL never calls stop(): the next one finds the head and reuses it.
    second = LocalRayHead(tmp_path / "ray", num_cpus=1)
    assert await second.start() == url
    assert second._session_id == session

    await second.stop()

    assert session_processes(session) == []
    assert not temp_dir.exists()
    assert not (tmp_path / "ray" / STATE_FILE).exists()
    assert not await answers(url)
    assert ray_head.dashboard_url is not None
    assert await answers(ray_head.dashboard_url), "stopping one head must not stop another"


async def test_a_stale_state_file_is_cleaned_up(tmp_path: Path) -> None:
    root = tmp_path / "ray"
    leftover = root / "ray-old"
    leftover.mkdir(parents=True)
    record = {"session_id": 2**22 + 12345, "temp_dir": str(leftover), "gcs_port": 1, "dashboard_port": 9}
    (root / STATE_FILE).write_text(json.dumps(record))
    # What an earlier stop() had no time to remove (or a process that exited while removing it).
    trash = root / f"{TRASH_PREFIX}ray-older"
    (trash / "pip" / "env").mkdir(parents=True)
    (trash / "pip" / "env" / "module.py").write_text("x = 1\n")

    head = LocalRayHead(root, num_cpus=1)
    try:
        url = await head.start()
        assert url != "http://127.0.0.1:9"
        assert not leftover.exists()
        for _ in range(100):
            if not trash.exists():
                break
            await asyncio.sleep(0.1)
        assert not trash.exists(), "a start removes the trash earlier stops left behind"
        assert json.loads((root / STATE_FILE).read_text())["dashboard_port"] == head.dashboard_port
    finally:
        await head.stop()


async def test_stop_does_not_wait_for_a_slow_removal(tmp_path: Path) -> None:
    root = tmp_path / "ray"
    temp_dir = root / "ray-stopped"
    (temp_dir / "session").mkdir(parents=True)
    (temp_dir / "session" / "log.txt").write_text("log\n")
    head = LocalRayHead(root, removal_budget=0.0)
    head.temp_dir = temp_dir

    await head.stop()

    assert not temp_dir.exists(), "the temp dir is renamed away at once"
    leftovers = [path for path in root.iterdir() if path.name.startswith(TRASH_PREFIX)]
    assert all(path.name == f"{TRASH_PREFIX}ray-stopped" for path in leftovers)
    for _ in range(100):
        if not any(path.exists() for path in leftovers):
            break
        await asyncio.sleep(0.1)
    assert not any(path.exists() for path in leftovers), "the removal goes on after stop() returned"


async def test_a_head_another_live_gateway_owns_is_left_to_it(ray_head: LocalRayHead, tmp_path: Path) -> None:
    root = tmp_path / "ray"
    root.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert ray_head.dashboard_port is not None
        assert ray_head.gcs_port is not None
        record = {
            "session_id": ray_head._session_id,
            "temp_dir": str(ray_head.temp_dir),
            "gcs_port": ray_head.gcs_port,
            "dashboard_port": ray_head.dashboard_port,
            "owner_pid": owner.pid,
            "owner_started": psutil.Process(owner.pid).create_time(),
        }
        (root / STATE_FILE).write_text(json.dumps(record))

        head = LocalRayHead(root, num_cpus=1)
        try:
            url = await head.start()
            assert url != ray_head.dashboard_url, "a head whose owner still runs is not taken over"
        finally:
            await head.stop()

        assert json.loads((root / STATE_FILE).read_text()) == record, "the owner's record is left alone"
        assert ray_head.dashboard_url is not None
        assert await answers(ray_head.dashboard_url)
    finally:
        owner.kill()
        owner.wait()


def path_of_length(base: Path, length: int) -> Path:
    """A path under `base` exactly `length` characters long (its last part padded)."""
    pad = length - len(str(base)) - 1
    assert pad > 0, (base, length)
    return base / ("x" * pad)


async def test_the_shared_head_starts_wherever_its_data_dir_lives() -> None:
    # The reported failure: clone paths of 16-19 characters gave temp dirs just under the old length check, whose
    # socket paths passed Ray's 107-byte AF_UNIX limit. Every depth must start, whatever the temp root's length.
    base = Path(tempfile.mkdtemp(prefix="d", dir="/tmp"))
    heads = [LocalRayHead(path_of_length(base, depth), num_cpus=1) for depth in (17, 20, 33, 130)]
    try:
        urls = await asyncio.gather(*(head.start() for head in heads))
        for head, url in zip(heads, urls, strict=True):
            assert await answers(url)
            assert head.temp_dir is not None
            deepest = f"{head.temp_dir}/session_2026-12-01_20-25-00_123456_1234567/sockets/dash_MetricsHead"
            assert len(deepest) <= 107, deepest
    finally:
        await asyncio.gather(*(head.stop() for head in heads))
        shutil.rmtree(base, ignore_errors=True)


async def test_a_deterministic_start_failure_fails_fast_quotes_ray_and_keeps_its_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Give Ray a temp dir too deep for its sockets on purpose (the old length check's mistake).
    monkeypatch.setattr(local_ray, "_MAX_TEMP_DIR_CHARS", 1000)
    base = Path(tempfile.mkdtemp(prefix="d", dir="/tmp"))
    head = LocalRayHead(path_of_length(base, 70), num_cpus=1)
    started = time.monotonic()
    try:
        with pytest.raises(RayStartError) as caught:
            await head.start()
        elapsed = time.monotonic() - started
        message = str(caught.value)
        assert caught.value.deterministic, message
        assert "AF_UNIX path length cannot exceed" in message  # Ray's own root-cause line, quoted
        assert "fix:" in message
        assert "GATEWAY_RAY_ADDRESS" not in message
        assert elapsed < 60, elapsed  # one try, not three tries of a minute each
        kept = Path(message.rsplit("Ray's logs are kept in ", 1)[1].rstrip(")"))
        assert "AF_UNIX path length" in (kept / START_OUTPUT).read_text()  # what `ray start` said, kept
        assert (kept / "session_latest" / "logs").is_dir()  # and Ray's own logs beside it
        assert [p for p in psutil.process_iter(["cmdline"]) if str(kept) in " ".join(p.info["cmdline"] or [])] == []
    finally:
        await head.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_signal_during_the_heads_start_stops_serve_within_seconds(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url=database_url, data_dir=str(tmp_path / "data"), isolation="shared")
    with serving(env, tmp_path) as served:
        deadline = time.monotonic() + 60
        while "starting a local Ray head" not in served.output():
            assert served.process.poll() is None, served.output()
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.1)
        time.sleep(1.0)  # `ray start` is under way
        began = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=30)
        assert time.monotonic() - began < 8, served.output()
    leftover = [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path / "data") in " ".join(p.info["cmdline"] or [])
    ]
    assert leftover == [], [p.info["cmdline"] for p in leftover]
