"""The CLI's admin commands (user, token, group, provider, program grant, migrate), run in-process by `main()`.

`tests/test_cli.py` runs the installed command in subprocesses; these call the same `main()` in a worker thread
(it runs its own event loop), which keeps the many small commands fast.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.cli import main
from tests.cli_support import one_line_error
from tests.conftest import upload_program
from tests.database import throwaway_name

if TYPE_CHECKING:
    from tests.conftest import TestUser


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., Awaitable[Ran]]


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))

    async def run(*args: str) -> Ran:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


async def ok(cli: Cli, *args: str) -> str:
    done = await cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_user_create_refuses_a_duplicate_and_a_bad_name(cli: Cli) -> None:
    token = (await ok(cli, "user", "create", "dave")).strip()
    assert token.startswith("gw_")
    assert "already exists" in one_line_error(await cli("user", "create", "dave"))
    assert "invalid user name" in one_line_error(await cli("user", "create", "no spaces"))


async def test_token_create_adds_a_working_token(cli: Cli, client: AsyncClient, alice: TestUser) -> None:
    out = await ok(cli, "token", "create", "alice")
    token = out.strip()
    assert out == token + "\n"
    assert token != alice.token
    for each in (token, alice.token):
        assert (await client.get("/api/v1/programs/", headers={"Authorization": f"Bearer {each}"})).status_code == 200
    assert "no user named 'nobody'" in one_line_error(await cli("token", "create", "nobody"))


async def test_groups_and_providers(cli: Cli, db_engine: AsyncEngine, alice: TestUser) -> None:
    await ok(cli, "group", "create", "admins")
    await ok(cli, "group", "add-user", "admins", "alice")
    await ok(cli, "group", "add-user", "admins", "alice")  # adding twice is harmless
    await ok(cli, "provider", "create", "acme", "--admin-group", "admins")
    async with db_engine.connect() as conn:
        admins = await conn.scalar(
            text(
                "SELECT count(*) FROM provider p JOIN provider_admin_group pa ON pa.provider_id = p.id "
                'JOIN "group" g ON g.id = pa.group_id JOIN group_membership m ON m.group_id = g.id '
                'JOIN "user" u ON u.id = m.user_id WHERE p.name = :p AND u.username = :u'
            ),
            {"p": "acme", "u": "alice"},
        )
    assert admins == 1

    assert "already exists" in one_line_error(await cli("group", "create", "admins"))
    assert "no group named 'ghosts'" in one_line_error(await cli("group", "add-user", "ghosts", "alice"))
    assert "no user named 'zed'" in one_line_error(await cli("group", "add-user", "admins", "zed"))
    assert "already exists" in one_line_error(await cli("provider", "create", "acme", "--admin-group", "admins"))
    assert "no group named 'ghosts'" in one_line_error(await cli("provider", "create", "b", "--admin-group", "ghosts"))


async def test_program_grant_lets_a_group_see_then_run_a_provider_program(
    cli: Cli, client: AsyncClient, alice: TestUser, bob: TestUser
) -> None:
    await ok(cli, "group", "create", "acme-admins")
    await ok(cli, "group", "create", "acme-users")
    await ok(cli, "group", "add-user", "acme-admins", "alice")
    await ok(cli, "group", "add-user", "acme-users", "bob")
    await ok(cli, "provider", "create", "acme", "--admin-group", "acme-admins")
    await upload_program(client, alice, "shared-fn", provider="acme")
    path = "/api/v1/programs/get_by_title/shared-fn/?provider=acme"
    run = {"title": "shared-fn", "provider": "acme", "arguments": {}}
    assert (await client.get(path, headers=bob.headers)).status_code == 404

    await ok(cli, "program", "grant", "shared-fn", "--provider", "acme", "--group", "acme-users", "--view")
    assert (await client.get(path, headers=bob.headers)).status_code == 200
    assert (await client.post("/api/v1/programs/run/", headers=bob.headers, json=run)).status_code in (403, 404)

    await ok(cli, "program", "grant", "shared-fn", "--provider", "acme", "--group", "acme-users", "--run")
    assert (await client.post("/api/v1/programs/run/", headers=bob.headers, json=run)).status_code == 200

    missing = await cli("program", "grant", "nope", "--provider", "acme", "--group", "acme-users", "--run")
    assert "has no program 'nope'" in one_line_error(missing)


@pytest.mark.parametrize(
    "levels",
    [(), ("--run", "--view")],
)
async def test_program_grant_needs_exactly_one_level(cli: Cli, levels: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli("program", "grant", "fn", "--provider", "acme", "--group", "g", *levels)
    assert exited.value.code == 2


async def test_commands_on_an_unmigrated_database_say_to_migrate(
    cli: Cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = make_url(database_url).set(drivername="postgresql", database="postgres")
    name = throwaway_name()

    async def admin_exec(sql: str) -> None:
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin_exec(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("GATEWAY_DATABASE_URL", make_url(database_url).set(database=name).render_as_string(False))
        assert "serverless-gateway migrate" in one_line_error(await cli("user", "create", "early"))
        migrated = await ok(cli, "migrate")
        assert migrated.startswith("database at revision ")
        assert await ok(cli, "migrate") == migrated
        await ok(cli, "user", "create", "early")
    finally:
        await admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
