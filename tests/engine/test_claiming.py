"""Fair claiming in PostgreSQL (no Ray): oldest first per user, round-robin across users, caps respected."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from serverless_gateway.models import Job, JobStatus
from serverless_gateway.repositories import engine as repo
from tests.api.jobs_support import add_job, add_program
from tests.conftest import TestUser


async def queue(app: FastAPI, user: TestUser, program: uuid.UUID, count: int, *, start: datetime) -> list[uuid.UUID]:
    return [await add_job(app, user, program, created_at=start + timedelta(seconds=index)) for index in range(count)]


async def test_candidates_are_round_robin_oldest_first_within_the_per_user_cap(app: FastAPI, make_user: object) -> None:
    users = [await make_user(name) for name in ("ann", "ben", "cat")]  # type: ignore[operator]
    program = await add_program(app, users[0], "p")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ann = await queue(app, users[0], program, 6, start=base)
    ben = await queue(app, users[1], program, 2, start=base + timedelta(minutes=1))
    cat = await queue(app, users[2], program, 1, start=base + timedelta(minutes=2))
    await add_job(app, users[0], program, status=JobStatus.RUNNING.value)  # ann already runs one

    async with app.state.gateway.sessionmaker() as session:
        picked = await repo.pick_fair_candidates(session, slots=10, per_user=3)

    assert picked == [ann[0], ben[0], cat[0], ann[1], ben[1]]


async def test_claim_respects_the_global_cap_and_skips_stop_requests(app: FastAPI, alice: TestUser) -> None:
    program = await add_program(app, alice, "p")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    jobs = await queue(app, alice, program, 5, start=base)
    async with app.state.gateway.sessionmaker.begin() as session:
        stopped = await session.get(Job, jobs[0])
        assert stopped is not None
        stopped.stop_requested = True
    await add_job(app, alice, program, status=JobStatus.PENDING.value)

    async with app.state.gateway.sessionmaker.begin() as session:
        claimed = await repo.claim_queued(session, max_running=3, per_user=10, batch=10)
        assert [item.job.id for item in claimed] == jobs[1:3]
        assert all(item.username == "alice" for item in claimed)

    async with app.state.gateway.sessionmaker.begin() as session:
        assert await repo.claim_queued(session, max_running=1, per_user=10, batch=10) == []
