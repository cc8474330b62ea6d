"""/metrics after real jobs on a real Ray head, read with prometheus-client's own parser."""

from __future__ import annotations

import re

import httpx
import pytest

from serverless_gateway.models import JobStatus
from tests.api.test_metrics import Samples, parse
from tests.conftest import TestUser
from tests.engine.conftest import LiveGateway, run_job, upload, wait_status

pytestmark = pytest.mark.ray

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_follow_real_jobs_through_their_states(
    live: LiveGateway, gw: httpx.AsyncClient, alice: TestUser
) -> None:
    before = parse((await gw.get("/metrics")).text)
    await upload(gw, alice, "fine", {"main.py": "print('fine')\n"})
    await upload(gw, alice, "broken", {"main.py": "raise SystemExit(3)\n"})
    fine, broken = await run_job(gw, alice, "fine"), await run_job(gw, alice, "broken")
    await wait_status(live.state, fine, {JobStatus.SUCCEEDED}, timeout=120)
    await wait_status(live.state, broken, {JobStatus.FAILED}, timeout=120)
    await gw.get(f"/api/v1/jobs/{fine}/", headers=alice.headers)
    scraped = await gw.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    after = parse(scraped.text)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("gateway_job_queued_to_pending_seconds_count", 2)
    assert grew("gateway_job_pending_to_running_seconds_count", 1)
    assert grew("gateway_job_run_seconds_count", 1, status="SUCCEEDED")
    assert grew("gateway_job_run_seconds_count", 1, status="FAILED")
    assert grew("gateway_jobs_finished_total", 1, status="SUCCEEDED")
    assert grew("gateway_jobs_finished_total", 1, status="FAILED")
    assert grew("gateway_http_requests_total", 1, method="GET", route="/api/v1/jobs/{job_id}", status="200")
    # Bounded cardinality: no job, user or token in any label.
    for (name, labels) in after:
        for label, text in labels:
            assert not UUID.search(text), (name, label, text)
            assert alice.token not in text
