"""`grant_program`, the service behind `serverless-gateway program grant`."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.errors import BadRequest, NotFound
from serverless_gateway.services import accounts
from serverless_gateway.services.programs import grant_program
from tests import conftest
from tests.api.programs_support import make_provider
from tests.conftest import upload_program


@pytest.fixture
async def provider_program(app: FastAPI, client: AsyncClient, alice: conftest.TestUser) -> str:
    await make_provider(app, "acme", alice)
    async with app.state.gateway.sessionmaker.begin() as session:
        await accounts.create_group(session, name="users")
    program = await upload_program(client, alice, "solver", provider="acme")
    return str(program["id"])


async def test_grant_then_change_the_level(app: FastAPI, db_engine: AsyncEngine, provider_program: str) -> None:
    async with app.state.gateway.sessionmaker.begin() as session:
        program = await grant_program(session, title="solver", provider="acme", group="users", level="view")
    assert str(program.id) == provider_program
    async with app.state.gateway.sessionmaker.begin() as session:
        await grant_program(session, title="solver", provider="acme", group="users", level="RUN")
    async with db_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT level FROM program_access"))).scalars().all()
    assert rows == ["run"]


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"provider": "nobody"}, NotFound, "no provider named 'nobody'"),
        ({"group": "nobody"}, NotFound, "no group named 'nobody'"),
        ({"title": "ghost"}, NotFound, "provider 'acme' has no program 'ghost'"),
        ({"level": "admin"}, BadRequest, "'view' or 'run'"),
    ],
)
async def test_grant_errors(
    app: FastAPI, provider_program: str, kwargs: dict[str, str], error: type[Exception], fragment: str
) -> None:
    arguments = {"title": "solver", "provider": "acme", "group": "users", "level": "run", **kwargs}
    async with app.state.gateway.sessionmaker() as session:
        with pytest.raises(error, match=fragment):
            await grant_program(session, **arguments)
