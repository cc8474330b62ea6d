"""The CLI's admin commands (user, token, group, provider, program grant, migrate), run in-process by `main()`.

`tests/test_cli.py` runs the installed command in subprocesses; these call the same `main()` in a worker thread
(it runs its own event loop), which keeps the many small commands fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from serverless_gateway.auth import TokenCache, authenticate, hash_token
from serverless_gateway.cli import main
from serverless_gateway.errors import Unauthorized
from serverless_gateway.services import accounts
from tests.api.jobs_support import add_job_with_token, add_program
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


async def _token_rows(cli: Cli, user: str) -> list[dict[str, str | None]]:
    rows: list[dict[str, str | None]] = json.loads(await ok(cli, "token", "list", user, "--json"))
    return rows


async def _programs_status(client: AsyncClient, token: str) -> tuple[int, str]:
    response = await client.get("/api/v1/programs/", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json().get("message", "") if response.status_code != 200 else ""


async def test_token_list_shows_each_token_without_its_secret(cli: Cli, client: AsyncClient, alice: TestUser) -> None:
    second = (await ok(cli, "token", "create", "alice", "--expires-in", "30d")).strip()
    rows = await _token_rows(cli, "alice")
    assert [set(row) for row in rows] == [{"id", "created", "last_used", "expires", "revoked", "state"}] * 2
    first_row, second_row = rows
    assert first_row["expires"] is None
    assert second_row["expires"] is not None
    lifetime = datetime.fromisoformat(second_row["expires"]) - datetime.fromisoformat(str(second_row["created"]))
    assert abs(lifetime - timedelta(days=30)) < timedelta(minutes=1)
    assert {row["state"] for row in rows} == {"active"}
    assert first_row["last_used"] is None

    assert (await _programs_status(client, alice.token))[0] == 200
    rows = await _token_rows(cli, "alice")
    assert rows[0]["last_used"] is not None
    assert rows[1]["last_used"] is None

    table = await ok(cli, "token", "list", "alice")
    for secret in (alice.token, second, hash_token(alice.token), hash_token(second)):
        assert secret not in table
        assert secret not in json.dumps(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "LAST", "USED", "EXPIRES", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == [str(row["id"]) for row in rows]
    assert "no user named 'nobody'" in one_line_error(await cli("token", "list", "nobody"))


async def test_last_used_is_written_at_most_once_a_minute(
    cli: Cli, client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    async def last_used() -> datetime | None:
        async with db_engine.connect() as conn:
            stamp: datetime | None = await conn.scalar(
                text("SELECT last_used_at FROM api_token WHERE token_hash = :h"), {"h": hash_token(alice.token)}
            )
        return stamp

    assert (await _programs_status(client, alice.token))[0] == 200
    first = await last_used()
    assert first is not None
    for _ in range(3):
        assert (await _programs_status(client, alice.token))[0] == 200
    assert await last_used() == first

    async with db_engine.begin() as conn:
        await conn.execute(text("UPDATE api_token SET last_used_at = now() - interval '2 minutes'"))
    stale = await last_used()
    assert (await _programs_status(client, alice.token))[0] == 200
    fresh = await last_used()
    assert stale is not None
    assert fresh is not None
    assert fresh > stale + timedelta(minutes=1)


async def test_a_revoked_token_stops_working_and_the_others_do_not(
    cli: Cli, client: AsyncClient, alice: TestUser
) -> None:
    other = (await ok(cli, "token", "create", "alice")).strip()
    first_id = (await _token_rows(cli, "alice"))[0]["id"]
    assert first_id is not None
    out = await ok(cli, "token", "revoke", first_id)
    assert out.startswith(f"token {first_id} revoked at ")
    assert await _programs_status(client, alice.token) == (401, "This token was revoked.")
    assert (await _programs_status(client, other))[0] == 200
    rows = await _token_rows(cli, "alice")
    assert [row["state"] for row in rows] == ["revoked", "active"]
    revoked_at = rows[0]["revoked"]
    await ok(cli, "token", "revoke", first_id)  # a second revoke keeps the first time
    assert (await _token_rows(cli, "alice"))[0]["revoked"] == revoked_at

    assert "no token with id" in one_line_error(await cli("token", "revoke", str(uuid.uuid4())))
    assert "is not a token id" in one_line_error(await cli("token", "revoke", "'; DROP TABLE api_token; --"))


async def test_an_expired_token_answers_401_saying_it_expired(
    cli: Cli, client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    short = (await ok(cli, "token", "create", "alice", "--expires-in", "1h")).strip()
    assert (await _programs_status(client, short))[0] == 200
    async with db_engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_token SET expires_at = now() - interval '1 second' WHERE token_hash = :h"),
            {"h": hash_token(short)},
        )
    status, message = await _programs_status(client, short)
    assert status == 401
    assert message.startswith("This token expired at ")
    assert (await _programs_status(client, alice.token))[0] == 200
    assert [row["state"] for row in await _token_rows(cli, "alice")] == ["active", "expired"]


@pytest.mark.parametrize("lifetime", ["30", "0d", "1w", "-5d", "1.5h", "", "99999999999d", "36501d"])
async def test_token_create_refuses_a_bad_lifetime(cli: Cli, alice: TestUser, lifetime: str) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli("token", "create", "alice", "--expires-in", lifetime)
    assert exited.value.code == 2


@pytest.mark.parametrize(("lifetime", "seconds"), [("45s", 45), ("90m", 5400), ("12h", 43200), ("2d", 172800)])
async def test_token_lifetime_units(cli: Cli, alice: TestUser, lifetime: str, seconds: int) -> None:
    await ok(cli, "token", "create", "alice", "--expires-in", lifetime)
    row = (await _token_rows(cli, "alice"))[1]
    assert row["expires"] is not None
    lifetime_seen = datetime.fromisoformat(row["expires"]) - datetime.fromisoformat(str(row["created"]))
    assert abs(lifetime_seen.total_seconds() - seconds) < 30


async def test_a_disabled_user_is_refused_until_enabled(cli: Cli, client: AsyncClient, alice: TestUser) -> None:
    other = (await ok(cli, "token", "create", "alice")).strip()
    assert await ok(cli, "user", "disable", "alice") == "user 'alice' is disabled\n"
    for token in (alice.token, other):
        assert await _programs_status(client, token) == (401, "User 'alice' is disabled.")
    assert [row["state"] for row in await _token_rows(cli, "alice")] == ["user disabled"] * 2
    await ok(cli, "user", "enable", "alice")
    for token in (alice.token, other):
        assert (await _programs_status(client, token))[0] == 200
    assert "no user named 'zed'" in one_line_error(await cli("user", "disable", "zed"))


async def test_a_disabled_users_running_job_loses_its_token(
    cli: Cli, app: FastAPI, client: AsyncClient, alice: TestUser
) -> None:
    job_id, headers = await add_job_with_token(app, alice, await add_program(app, alice, "fn"))
    assert (await client.get(f"/api/v1/jobs/{job_id}/", headers=headers)).status_code == 200
    await ok(cli, "user", "disable", "alice")
    assert (await client.get(f"/api/v1/jobs/{job_id}/", headers=headers)).status_code == 401
    await ok(cli, "user", "enable", "alice")
    assert (await client.get(f"/api/v1/jobs/{job_id}/", headers=headers)).status_code == 200


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(database_url)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


async def test_a_revoked_token_is_refused_once_the_cache_entry_ends(
    sessions: async_sessionmaker[AsyncSession], alice: TestUser
) -> None:
    cache = TokenCache(ttl_seconds=0.3)
    async with sessions.begin() as session:
        principal = await authenticate(session, alice.token, cache)
    assert principal.user_id == alice.id
    assert principal.token_id is not None
    async with sessions.begin() as session:
        await accounts.revoke_token(session, token_id=str(principal.token_id))
    async with sessions.begin() as session:
        assert (await authenticate(session, alice.token, cache)).user_id == alice.id  # still cached
    await asyncio.sleep(0.4)
    async with sessions.begin() as session:
        with pytest.raises(Unauthorized, match="revoked"):
            await authenticate(session, alice.token, cache)


async def test_a_cached_token_is_refused_as_soon_as_it_expires(
    sessions: async_sessionmaker[AsyncSession], alice: TestUser
) -> None:
    cache = TokenCache(ttl_seconds=3600)
    async with sessions.begin() as session:
        user = await accounts.require_user(session, "alice")
        token = await accounts.create_token(session, user=user, expires_in=timedelta(seconds=1))
    async with sessions.begin() as session:
        assert (await authenticate(session, token, cache)).expires_at is not None
    await asyncio.sleep(1.1)
    async with sessions.begin() as session:
        with pytest.raises(Unauthorized, match="expired"):
            await authenticate(session, token, cache)


async def test_lists_show_what_was_created_as_a_table_or_json(
    cli: Cli, client: AsyncClient, alice: TestUser, bob: TestUser
) -> None:
    assert json.loads(await ok(cli, "provider", "list", "--json")) == []
    assert (await ok(cli, "group", "list")).strip() == "(none)"
    await ok(cli, "group", "create", "acme-admins")
    await ok(cli, "group", "create", "lab")
    await ok(cli, "group", "add-user", "acme-admins", "alice")
    await ok(cli, "group", "add-user", "lab", "alice")
    await ok(cli, "group", "add-user", "lab", "bob")
    await ok(cli, "provider", "create", "acme", "--admin-group", "acme-admins")
    await upload_program(client, alice, "solver", provider="acme")
    await ok(cli, "program", "grant", "solver", "--provider", "acme", "--group", "lab", "--run")

    users = json.loads(await ok(cli, "user", "list", "--json"))
    assert [(u["name"], u["groups"]) for u in users] == [("alice", ["acme-admins", "lab"]), ("bob", ["lab"])]
    groups = json.loads(await ok(cli, "group", "list", "--json"))
    assert groups == [
        {"name": "acme-admins", "members": ["alice"], "administers": ["acme"]},
        {"name": "lab", "members": ["alice", "bob"], "administers": []},
    ]
    providers = json.loads(await ok(cli, "provider", "list", "--json"))
    assert [(p["name"], p["admin_groups"]) for p in providers] == [("acme", ["acme-admins"])]
    grants = [{"provider": "acme", "program": "solver", "group": "lab", "level": "run"}]
    assert json.loads(await ok(cli, "program", "grants", "--json")) == grants
    assert json.loads(await ok(cli, "program", "grants", "--provider", "acme", "--json")) == grants
    assert "no provider named 'nope'" in one_line_error(await cli("program", "grants", "--provider", "nope"))

    table = (await ok(cli, "group", "list")).splitlines()
    assert table[0].split() == ["NAME", "MEMBERS", "ADMINISTERS"]
    assert table[1].split() == ["acme-admins", "alice", "acme"]
    assert table[2].split() == ["lab", "alice,bob", "-"]
    assert "alice" in await ok(cli, "user", "list")
    assert alice.token not in await ok(cli, "user", "list", "--json")


def _actions(
    parser: argparse.ArgumentParser, path: str = "serverless-gateway"
) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from ((path, command) for command in action._choices_actions)  # each sub-command's own help
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_cli_option_and_argument_has_a_help_text() -> None:
    from serverless_gateway.cli import _parser

    missing = [
        f"{path} {action.dest}"
        for path, action in _actions(_parser())
        if not isinstance(action, argparse._HelpAction | argparse._VersionAction) and not action.help
    ]
    assert missing == []
    commands = [a for _, a in _actions(_parser())]
    assert len(commands) > 20
