"""LocalRayHead: a private head, reused after its gateway was killed, stopped without touching other heads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from serverless_gateway.engine.local_ray import STATE_FILE, TRASH_PREFIX, LocalRayHead

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
