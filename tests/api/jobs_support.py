"""Helpers shared by the jobs and files API tests: programs and jobs inserted straight through the models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select

from serverless_gateway.auth import hash_token, new_job_token
from serverless_gateway.models import Job, Program, Provider
from tests.conftest import TestUser


async def add_program(app: FastAPI, owner: TestUser, title: str, *, provider: str | None = None) -> uuid.UUID:
    """A program row (no artifact behind it: enough for everything but running it)."""
    async with app.state.gateway.sessionmaker.begin() as session:
        provider_id = None
        if provider is not None:
            provider_id = await session.scalar(select(Provider.id).where(Provider.name == provider))
            assert provider_id is not None, f"no provider {provider}"
        program = Program(
            id=uuid.uuid4(),
            title=title,
            entrypoint="main.py",
            artifact_key="artifacts/none",
            artifact_sha256="0" * 64,
            provider_id=provider_id,
            author_id=owner.id,
        )
        session.add(program)
    return program.id


async def add_job(
    app: FastAPI,
    owner: TestUser,
    program_id: uuid.UUID,
    *,
    status: str = "QUEUED",
    created_at: datetime | None = None,
    **columns: Any,
) -> uuid.UUID:
    """A job row of `owner` on the program, in any status."""
    async with app.state.gateway.sessionmaker.begin() as session:
        job = Job(id=uuid.uuid4(), program_id=program_id, author_id=owner.id, status=status, **columns)
        if created_at is not None:
            job.created_at = created_at
        session.add(job)
    return job.id


async def add_job_with_token(
    app: FastAPI, owner: TestUser, program_id: uuid.UUID, *, status: str = "RUNNING"
) -> tuple[uuid.UUID, dict[str, str]]:
    """A job holding a job token; answers the job id and the headers that authenticate as that job."""
    token = new_job_token()
    job_id = await add_job(app, owner, program_id, status=status, token_hash=hash_token(token))
    return job_id, {"Authorization": f"Bearer {token}"}


async def job_columns(app: FastAPI, job_id: uuid.UUID) -> Job:
    async with app.state.gateway.sessionmaker() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job
