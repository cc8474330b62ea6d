"""Fixtures: a real PostgreSQL database built by the migrations, the app, clients and test data."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings
from serverless_gateway.schema import alembic_config
from serverless_gateway.services import accounts
from tests.database import async_url, server_url, throwaway_name
from tests.watchdog import _watchdog  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).resolve().parent.parent


def run_migrations(url: str) -> None:
    """Build the schema the way production does: with Alembic."""
    command.upgrade(alembic_config(url), "head")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database on the test server, migrated to head, dropped at the end."""
    base, server = server_url()
    name = throwaway_name()
    admin = make_url(base).set(drivername="postgresql", database="postgres")

    async def admin_exec(sql: str) -> None:
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False).replace("+asyncpg", ""))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_exec(f'CREATE DATABASE "{name}"'))
    url = async_url(base, name)
    try:
        run_migrations(url)
        yield url
    finally:
        asyncio.run(admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if server is not None:
            server.cleanup()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("gateway-data")
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        public_url="http://testserver",
        max_upload_bytes=1024 * 1024,
        max_artifact_bytes=1024 * 1024,
        max_active_jobs_per_user=20,
        max_page_size=50,
        run_engine=False,
        token_cache_seconds=0,
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


TABLES = (
    "runtime_job, job_event, job, program_access, program, provider_admin_group, provider, "
    'group_membership, "group", api_token, "user"'
)


@pytest.fixture(autouse=True)
async def _clean_database(db_engine: AsyncEngine) -> AsyncIterator[None]:
    """Each test starts from empty tables."""
    yield
    async with db_engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # a helper, not a test class for pytest to collect

    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_user(app: FastAPI):  # type: ignore[no-untyped-def]
    """Create a user with a fresh API token."""

    async def make(name: str | None = None) -> TestUser:
        username = name or f"user-{uuid.uuid4().hex[:8]}"
        async with app.state.gateway.sessionmaker.begin() as session:
            user, token = await accounts.create_user(session, username=username)
        return TestUser(id=user.id, name=username, token=token)

    return make


@pytest.fixture
async def alice(make_user) -> TestUser:  # type: ignore[no-untyped-def]
    return await make_user("alice")


@pytest.fixture
async def bob(make_user) -> TestUser:  # type: ignore[no-untyped-def]
    return await make_user("bob")


def make_tar(files: dict[str, str | bytes], *, gzip: bool = False) -> bytes:
    """A tar archive holding `files` (name -> content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as archive:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def upload_program(
    client: AsyncClient,
    user: TestUser,
    title: str,
    *,
    files: dict[str, str | bytes] | None = None,
    entrypoint: str = "main.py",
    **fields: str,
) -> dict[str, object]:
    """Upload a program through the API and return its JSON; fails the test on a non-2xx answer."""
    archive = make_tar(files or {entrypoint: "print('hello')\n"})
    response = await client.post(
        "/api/v1/programs/upload/",
        headers=user.headers,
        data={"title": title, "entrypoint": entrypoint, **fields},
        files={"artifact": ("artifact.tar", archive, "application/x-tar")},
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body
