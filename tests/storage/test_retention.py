"""Garbage collection on both backends (local and moto's S3): listing times and keys lead to the same removals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.models import Job, Program
from serverless_gateway.services import accounts
from serverless_gateway.services.retention import collect_garbage
from tests.conftest import TABLES
from tests.storage.conftest import Backend

GRACE = timedelta(hours=1)


@pytest.fixture
async def owner(app: FastAPI, db_engine: AsyncEngine) -> AsyncIterator[uuid.UUID]:
    """A user of this test only (the storage suite does not clean tables: this fixture does)."""
    async with app.state.gateway.sessionmaker.begin() as session:
        user, _ = await accounts.create_user(session, username=f"gc-{uuid.uuid4().hex[:8]}")
    yield user.id
    async with db_engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


async def test_collection_on_each_backend(backend: Backend, app: FastAPI, owner: uuid.UUID) -> None:
    sessions = app.state.gateway.sessionmaker
    async with sessions.begin() as session:
        program = Program(
            id=uuid.uuid4(),
            title="fn",
            entrypoint="main.py",
            artifact_key="artifacts/used.tar",
            artifact_sha256="a" * 64,
            author_id=owner,
        )
        session.add(program)
        await session.flush()
        session.add(
            Job(id=uuid.uuid4(), program_id=program.id, author_id=owner, status="SUCCEEDED", logs_key="logs/kept.log")
        )
    world = {
        "artifacts/used.tar": True,
        "artifacts/nested/odd.tar": False,
        "artifacts/old.tar": False,
        "results/orphan.json": False,
        "logs/kept.log": True,
        "logs/orphan.log": False,
        "files/users/u/_/fn/data.csv": True,
    }
    for key in world:
        await backend.storage.put_bytes(key, b"x")

    young = await collect_garbage(sessions, backend.storage, grace=GRACE)
    assert young.objects == []
    done = await collect_garbage(sessions, backend.storage, grace=GRACE, now=datetime.now(UTC) + 2 * GRACE)
    assert sorted(done.objects) == sorted(key for key, keep in world.items() if not keep)
    assert {key: await backend.storage.exists(key) for key in world} == world
