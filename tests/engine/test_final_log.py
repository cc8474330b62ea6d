"""An ended job's log read from a real Ray head for storing: whole when small, its capped tail when big."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest

from serverless_gateway.engine import final_log as final_log_module
from serverless_gateway.engine.local_ray import LocalRayHead
from serverless_gateway.engine.ray_client import RayJobNotFound, RayJobs

pytestmark = pytest.mark.ray

LINES = 60_000  # ~3.4 MiB of numbered lines
PRINTER = (
    "python -c \"import sys, time\n"
    "for i in range({lines}): sys.stdout.write(f'line {{i:07d}} ' + 'x' * 44 + '\\\\n')\n"
    "sys.stdout.flush(); time.sleep({sleep})\""
)


async def submit(ray: RayJobs, *, lines: int, sleep: float = 0.0) -> str:
    submission_id = f"final-log-{uuid.uuid4().hex[:12]}"
    await ray.submit(submission_id=submission_id, entrypoint=PRINTER.format(lines=lines, sleep=sleep), runtime_env={})
    return submission_id


async def wait_ended(ray: RayJobs, submission_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await ray.job_state(submission_id)
        if state is not None and state.is_terminal:
            assert state.status == "SUCCEEDED", state
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{submission_id} did not end in {timeout} s")


@pytest.fixture
async def ray(ray_head: LocalRayHead) -> AsyncIterator[RayJobs]:
    assert ray_head.dashboard_url is not None
    client = RayJobs(ray_head.dashboard_url)
    yield client
    await client.close()


async def test_a_small_log_is_read_whole_and_a_big_one_as_its_capped_tail(
    ray: RayJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    submission_id = await submit(ray, lines=LINES)
    await wait_ended(ray, submission_id)

    whole = await ray.logs(submission_id, 64 * 1024 * 1024)
    assert whole.count("\n") >= LINES
    assert f"line {LINES - 1:07d} " in whole
    assert whole.index("line 0000000 ") < whole.index(f"line {LINES - 1:07d} ")

    # Over the quick cap, only the last max_bytes (from a line start) are kept, however long the log.
    monkeypatch.setattr(final_log_module, "QUICK_LOG_BYTES", 64 * 1024)
    tracemalloc.start()
    try:
        tail = await ray.logs(submission_id, 256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 200 * 1024 < len(tail) <= 256 * 1024 + 64 * 1024
    assert tail.startswith("line "), tail[:80]
    assert tail.rstrip("\n").endswith("x" * 44)
    assert f"line {LINES - 1:07d} " in tail
    assert "line 0000000 " not in tail
    assert peak < 3 * 1024 * 1024, peak  # the 3.4 MiB log was never held whole


async def test_a_job_still_exiting_gives_what_ray_holds_now(ray: RayJobs, monkeypatch: pytest.MonkeyPatch) -> None:
    submission_id = await submit(ray, lines=20_000, sleep=20)
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline and "line 0019999 " not in text:
        await asyncio.sleep(0.5)
        text = await ray.logs(submission_id, 4 * 1024 * 1024, wait_end=False)
    assert "line 0019999 " in text
    monkeypatch.setattr(final_log_module, "QUICK_LOG_BYTES", 64 * 1024)
    started = time.monotonic()
    streamed = await ray.logs(submission_id, 128 * 1024, wait_end=False)
    assert time.monotonic() - started < 20  # it did not wait for the job's end
    assert "line 0019999 " in streamed
    assert len(streamed) <= 192 * 1024
    await ray.stop(submission_id)


async def test_an_unknown_job_is_not_found(ray: RayJobs) -> None:
    with pytest.raises(RayJobNotFound):
        await ray.logs("final-log-never-submitted", 1024 * 1024)
