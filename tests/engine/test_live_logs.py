"""A running job's log on a real Ray head: followed live over SSE by a real HTTP client, bounded when huge."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import psutil
import pytest

from serverless_gateway.engine.live_logs import LIVE_WINDOW_BYTES
from serverless_gateway.engine.log_tail import LogTail
from serverless_gateway.engine.runtime import EngineRuntime
from serverless_gateway.engine.submission import submission_id_for
from serverless_gateway.models import JobStatus
from tests.conftest import TestUser
from tests.engine.conftest import LiveGateway, run_job, upload, wait_status

pytestmark = pytest.mark.ray

TICKER = """\
import time
for i in range(8):
    print(f"tick {i} {time.time():.3f}", flush=True)
    time.sleep(0.5)
"""
# 64 MiB of log at once, then a last line, then a long sleep (the job is stopped by the test)
FLOOD = """\
import sys, time
line = "x" * 1023 + "\\n"
for _ in range(64):
    sys.stdout.write(line * 1024)
sys.stdout.flush()
print("flood done", flush=True)
time.sleep(300)
"""
LATENCY_BOUND = 4.0
"""Seconds from a print to the follower (Ray's own tail polls about once a second; the machine is shared)."""


def engine_of(live: LiveGateway) -> EngineRuntime:
    engine = live.state.engine
    assert isinstance(engine, EngineRuntime)
    return engine


async def follow(gw: httpx.AsyncClient, user: TestUser, job_id: uuid.UUID, **headers: str) -> list[dict[str, Any]]:
    """Every event of `?follow=true` with the time it arrived, until the stream ends."""
    events: list[dict[str, Any]] = []
    fields: dict[str, Any] = {"data": []}
    url = f"/api/v1/jobs/{job_id}/logs/"
    async with gw.stream("GET", url, headers={**user.headers, **headers}, params={"follow": "true"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line == "":
                if fields["data"]:
                    events.append({**fields, "at": time.time()})
                fields = {"data": []}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                if name == "data":
                    fields["data"].append(value)
                else:
                    fields[name] = value
    return events


async def test_followers_get_each_line_as_it_is_printed_from_one_tail_of_ray(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    tails = engine_of(live).live.tails
    acquired: list[LogTail] = []
    original = tails._acquire

    async def recorded(*args: Any) -> LogTail:
        tail = await original(*args)
        acquired.append(tail)
        return tail

    monkeypatch.setattr(tails, "_acquire", recorded)
    await upload(gw, alice, "ticker", {"main.py": TICKER})
    job_id = await run_job(gw, alice, "ticker")
    followers = await asyncio.gather(*(follow(gw, alice, job_id) for _ in range(3)))

    for events in followers:
        assert events[-1].get("event") == "end"
        assert json.loads(events[-1]["data"][0])["status"] == JobStatus.SUCCEEDED
        ticks = [(line, event["at"]) for event in events[:-1] for line in event["data"] if line.startswith("tick ")]
        assert [line.split()[1] for line, _ in ticks] == [str(i) for i in range(8)]
        lags = [at - float(line.split()[2]) for line, at in ticks]
        assert max(lags) < LATENCY_BOUND, lags
        offsets = [int(event["id"]) for event in events[:-1]]
        assert offsets == sorted(offsets)
    # three followers, one stream of Ray's log (besides tries refused before Ray knew the job)
    assert len({id(tail) for tail in acquired if tail.total > 0}) == 1

    # resumed after the event that held the third tick: the lines after that event only, from the stored log
    events = followers[0]
    at = next(i for i, e in enumerate(events) if any(line.startswith("tick 2 ") for line in e["data"]))
    later = [line for event in events[at + 1 : -1] for line in event["data"]]
    resumed = await follow(gw, alice, job_id, **{"Last-Event-ID": events[at]["id"]})
    assert [line for event in resumed[:-1] for line in event["data"]] == later
    assert resumed[-1].get("event") == "end"


async def test_a_huge_live_log_costs_a_bounded_tail_however_often_it_is_read(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    await upload(gw, alice, "flood", {"main.py": FLOOD})
    job_id = await run_job(gw, alice, "flood")
    await wait_status(live.state, job_id, {JobStatus.RUNNING})
    url = f"/api/v1/jobs/{job_id}/logs/"
    deadline = time.monotonic() + 120
    while not (await gw.get(url, headers=alice.headers, params={"tail": 1})).json()["logs"].startswith("flood done"):
        assert time.monotonic() < deadline, "the flood's last line never showed"
        await asyncio.sleep(1)

    gateway = psutil.Process()
    before = gateway.memory_info().rss
    for _ in range(3):
        response = await gw.get(url, headers=alice.headers)
        logs = response.json()["logs"]
        assert logs.endswith("flood done\n")
        assert len(logs) <= LIVE_WINDOW_BYTES
        window = await gw.get(url, headers=alice.headers, params={"offset": 0})
        body = window.json()
        assert body["next_offset"] > 64 * 1024 * 1024 - LIVE_WINDOW_BYTES  # real offsets, though the start is gone
        assert body["logs"].startswith("x" * 1023 + "\n")  # from the first whole line still kept
    grown = gateway.memory_info().rss - before
    assert grown < 96 * 1024 * 1024, f"the gateway grew by {grown / 2**20:.0f} MiB over three reads"
    tail = engine_of(live).live.tails._tails[submission_id_for(job_id)]
    assert tail.total > 64 * 1024 * 1024
    assert len(tail._buffer) <= LIVE_WINDOW_BYTES

    stopped = await gw.post(f"/api/v1/jobs/{job_id}/stop/", headers=alice.headers, json={"service": None})
    assert stopped.status_code == 200
    await wait_status(live.state, job_id, {JobStatus.STOPPED}, timeout=60)
