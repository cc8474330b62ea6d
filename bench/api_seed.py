"""The bench's throwaway database: created, migrated with Alembic, seeded with users, programs and jobs."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from serverless_gateway.db import create_engine, create_sessionmaker
from serverless_gateway.models import Program, ProgramAccess
from serverless_gateway.services import accounts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

USER_TITLES = ["vqe", "qaoa", "sampler-demo", "estimator-demo", "chemistry", "portfolio", "grover", "hello-world"]
PROVIDERS = {
    "ibm": ["circuit-knitting", "transpiler-service", "error-mitigation"],
    "acme": ["chem-solver", "optimizer"],
    "qlab": ["kernel-trainer", "sampler-plus", "noise-study"],
}
TERMINAL_WEIGHTS = {"SUCCEEDED": 78, "FAILED": 15, "STOPPED": 7}
ACTIVE_WEIGHTS = {"RUNNING": 12, "PENDING": 4, "QUEUED": 8}
ACTIVE_WINDOW = timedelta(hours=6)  # only jobs this recent may still be active, 1 in 4 of them
CATALOG_SHARE = 0.25


@dataclass
class SeedUser:
    id: uuid.UUID
    name: str
    token: str
    titles: list[str]
    jobs: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Seed:
    users: list[SeedUser]
    user_programs: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    catalog_programs: list[tuple[str, str, uuid.UUID]] = field(default_factory=list)  # provider, title, id


def plain_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str, driver: str) -> str:
    return make_url(url).set(drivername=driver, database=name).render_as_string(hide_password=False)


async def admin_execute(server: str, sql: str) -> None:
    for attempt in range(30):  # a shared server may be out of connections for a moment
        try:
            conn = await asyncpg.connect(with_database(server, "postgres", "postgresql"))
            break
        except asyncpg.TooManyConnectionsError:
            if attempt == 29:
                raise
            await asyncio.sleep(1)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_migrations(url: str) -> None:
    from alembic import command

    from serverless_gateway.schema import alembic_config

    command.upgrade(alembic_config(url), "head")


async def seed_accounts(url: str, n_users: int, rng: random.Random) -> Seed:
    """Users with tokens (through the accounts service), providers with admins, and their programs."""
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            public = await accounts.create_group(session, name="bench-users")
            users: list[SeedUser] = []
            for i in range(n_users):
                row, token = await accounts.create_user(session, username=f"bench-user-{i:03d}")
                await accounts.add_user_to_group(session, username=row.username, group_name=public.name)
                titles = rng.sample(USER_TITLES, rng.randint(2, 6))
                users.append(SeedUser(id=row.id, name=row.username, token=token, titles=titles))
            seed = Seed(users=users)
            for user in users:
                programs = [_program(title, author_id=user.id) for title in user.titles]
                session.add_all(programs)
                seed.user_programs[user.id] = [p.id for p in programs]
            for index, (provider_name, titles) in enumerate(PROVIDERS.items()):
                admins = await accounts.create_group(session, name=f"{provider_name}-admins")
                admin = users[index]
                await accounts.add_user_to_group(session, username=admin.name, group_name=admins.name)
                provider = await accounts.create_provider(session, name=provider_name, admin_group=admins.name)
                for title in titles:
                    program = _program(title, author_id=admin.id, provider_id=provider.id)
                    session.add(program)
                    session.add(ProgramAccess(program_id=program.id, group_id=public.id, level="run"))
                    seed.catalog_programs.append((provider_name, title, program.id))
            await session.flush()
    finally:
        await engine.dispose()
    return seed


def _program(title: str, *, author_id: uuid.UUID, provider_id: uuid.UUID | None = None) -> Program:
    program_id = uuid.uuid4()
    return Program(
        id=program_id,
        title=title,
        entrypoint="main.py",
        artifact_key=f"programs/{program_id}/artifact.tar",
        artifact_sha256="0" * 64,
        dependencies=[],
        env_vars={},
        provider_id=provider_id,
        author_id=author_id,
    )


JOB_COLUMNS = [
    "id", "program_id", "author_id", "status", "arguments", "config", "result", "ray_submission_id",
    "token_hash", "created_at", "updated_at", "started_at", "finished_at",
]  # fmt: skip


def job_records(seed: Seed, n_jobs: int, rng: random.Random, now: datetime) -> list[tuple[Any, ...]]:
    """`n_jobs` jobs over the users (skewed: a few heavy users), their programs, statuses and the past year."""
    weights = [rng.lognormvariate(0, 0.7) for _ in seed.users]
    scale = n_jobs / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in range(n_jobs - sum(counts)):
        counts[i % len(counts)] += 1
    terminal, terminal_weights = list(TERMINAL_WEIGHTS), list(TERMINAL_WEIGHTS.values())
    active, active_weights = list(ACTIVE_WEIGHTS), list(ACTIVE_WEIGHTS.values())
    records: list[tuple[Any, ...]] = []
    for user, count in zip(seed.users, counts, strict=True):
        user.jobs = count
        own = seed.user_programs[user.id]
        own_weights = [1 / (k + 1) for k in range(len(own))]
        for _ in range(count):
            if rng.random() < CATALOG_SHARE:
                program_id = rng.choice(seed.catalog_programs)[2]
            else:
                program_id = rng.choices(own, own_weights)[0]
            created = now - timedelta(days=365 * rng.random() ** 2, seconds=rng.random() * 60)
            if now - created < ACTIVE_WINDOW and rng.random() < 0.25:
                status = rng.choices(active, active_weights)[0]
            else:
                status = rng.choices(terminal, terminal_weights)[0]
            started = None if status == "QUEUED" else created + timedelta(seconds=rng.uniform(1, 60))
            finished = None
            if status in ("SUCCEEDED", "FAILED", "STOPPED") and started is not None:
                finished = started + timedelta(seconds=rng.uniform(1, 900))
            job_id = uuid.uuid4()
            records.append(
                (
                    job_id,
                    program_id,
                    user.id,
                    status,
                    json.dumps({"shots": rng.choice([100, 1024, 4096]), "depth": rng.randint(1, 20)}),
                    json.dumps({"workers": 1}),
                    '{"counts": {"00": 512, "11": 512}}' if status == "SUCCEEDED" else None,
                    None if status == "QUEUED" else f"gw-{job_id}",
                    uuid.uuid4().hex * 2 if status in ("PENDING", "RUNNING") else None,
                    created,
                    finished or started or created,
                    started,
                    finished,
                )
            )
    return records


async def seed_jobs(url: str, records: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.copy_records_to_table("job", records=records, columns=JOB_COLUMNS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
