"""Quotas on what a job adds to itself: events and runtime jobs are capped (429) and refused once it ended (409)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import func, select

from serverless_gateway.models import JobEvent, RuntimeJob
from tests.api.jobs_support import add_job, add_job_with_token, add_program
from tests.api.programs_support import tune_settings

if TYPE_CHECKING:
    from tests.conftest import TestUser

__all__ = ["tune_settings"]

JOBS = "/api/v1/jobs/"
ERROR = {"type": "ERROR", "code": 1, "message": "boom", "exception": "E", "args": []}


async def rows(app: FastAPI, model: type[JobEvent] | type[RuntimeJob], job_id: uuid.UUID) -> int:
    async with app.state.gateway.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(model).where(model.job_id == job_id))
    return int(count or 0)


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED", "STOPPED"])
async def test_an_ended_job_takes_no_more_events_or_runtime_jobs(
    app: FastAPI, client: AsyncClient, alice: TestUser, status: str
) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status=status)
    event = await client.post(f"{JOBS}{job_id}/event/", headers=alice.headers, json=ERROR)
    assert event.status_code == 409, event.text
    assert event.json()["message"] == f"Job has already finished ({status}); it takes no more events."
    runtime = await client.post(f"{JOBS}{job_id}/runtime_jobs/", headers=alice.headers, json={"runtime_job": "rt"})
    assert runtime.status_code == 409, runtime.text
    assert "it takes no more runtime jobs" in runtime.json()["message"]
    assert await rows(app, JobEvent, job_id) == 0
    assert await rows(app, RuntimeJob, job_id) == 0


async def test_events_stop_at_the_quota(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_events_per_job=5)
    job_id, headers = await add_job_with_token(app, alice, await add_program(app, alice, "hello"))
    url = f"{JOBS}{job_id}/event/"
    answers = await asyncio.gather(*(client.post(url, headers=headers, json=ERROR) for _ in range(8)))
    assert sorted(answer.status_code for answer in answers) == [200] * 5 + [429] * 3
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json() == {"message": "The job has reached its limit of 5 events."}
    assert await rows(app, JobEvent, job_id) == 5

    # Sub-status changes still work past the quota; they only stop adding events.
    for sub_status in ("MAPPING", "EXECUTING_QPU"):
        changed = await client.patch(f"{JOBS}{job_id}/sub_status/", headers=headers, data={"sub_status": sub_status})
        assert changed.status_code == 200, changed.text
        assert changed.json()["sub_status"] == sub_status
    assert await rows(app, JobEvent, job_id) == 5
    listed = await client.get(f"{JOBS}{job_id}/events/", headers=alice.headers)
    assert len(listed.json()) == 5


async def test_sub_status_events_count_towards_the_quota(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_events_per_job=2)
    job_id, headers = await add_job_with_token(app, alice, await add_program(app, alice, "hello"))
    for sub_status in ("MAPPING", "OPTIMIZING_HARDWARE"):
        changed = await client.patch(f"{JOBS}{job_id}/sub_status/", headers=headers, data={"sub_status": sub_status})
        assert changed.status_code == 200, changed.text
    assert (await client.post(f"{JOBS}{job_id}/event/", headers=headers, json=ERROR)).status_code == 429


async def test_runtime_jobs_stop_at_the_quota_but_a_known_one_may_be_sent_again(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_runtime_jobs_per_job=3)
    job_id, headers = await add_job_with_token(app, alice, await add_program(app, alice, "hello"))
    url = f"{JOBS}{job_id}/runtime_jobs/"
    answers = await asyncio.gather(
        *(client.post(url, headers=headers, json={"runtime_job": f"rt-{n}"}) for n in range(6))
    )
    assert sorted(answer.status_code for answer in answers) == [200] * 3 + [429] * 3
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json() == {"message": "The job has reached its limit of 3 runtime jobs."}
    assert await rows(app, RuntimeJob, job_id) == 3
    kept = next(answer.json()["runtime_job"] for answer in answers if answer.status_code == 200)
    again = await client.post(url, headers=headers, json={"runtime_job": kept, "runtime_session": "s"})
    assert again.status_code == 200, again.text
    assert again.json() == {"runtime_job": kept, "runtime_session": "s"}
    assert len((await client.get(url, headers=alice.headers)).json()["runtime_jobs"]) == 3
