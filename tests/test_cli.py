"""The `serverless-gateway` command against the test database, run as a subprocess like an operator would."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.server import default_public_url
from tests.cli_support import CLI, cli_env, run_cli, serving
from tests.conftest import upload_program

if TYPE_CHECKING:
    from tests.conftest import TestUser


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(database_url=database_url, data_dir=str(tmp_path / "data"))


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, env=env)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: a non-zero exit, nothing on stdout, exactly one line on stderr."""
    assert done.returncode != 0, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


async def test_user_create_prints_only_a_token_that_authenticates(env: dict[str, str], client: AsyncClient) -> None:
    done = await cli("user", "create", "carol", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    assert token.startswith("gw_")
    assert (await client.get("/api/v1/programs/", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    assert (await client.get("/api/v1/programs/", headers={"Authorization": "Bearer gw_wrong"})).status_code == 401


async def test_user_create_refuses_a_duplicate_and_a_bad_name(env: dict[str, str]) -> None:
    assert (await cli("user", "create", "dave", env=env)).returncode == 0
    assert "already exists" in one_line_error(await cli("user", "create", "dave", env=env))
    assert "invalid user name" in one_line_error(await cli("user", "create", "no spaces", env=env))


async def test_token_create_adds_a_working_token(env: dict[str, str], client: AsyncClient, alice: TestUser) -> None:
    done = await cli("token", "create", "alice", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    assert token != alice.token
    for each in (token, alice.token):
        assert (await client.get("/api/v1/programs/", headers={"Authorization": f"Bearer {each}"})).status_code == 200
    assert "no user named 'nobody'" in one_line_error(await cli("token", "create", "nobody", env=env))


async def test_groups_and_providers(env: dict[str, str], db_engine: AsyncEngine, alice: TestUser) -> None:
    assert (await cli("group", "create", "admins", env=env)).returncode == 0
    assert (await cli("group", "add-user", "admins", "alice", env=env)).returncode == 0
    assert (await cli("group", "add-user", "admins", "alice", env=env)).returncode == 0, "adding twice is harmless"
    assert (await cli("provider", "create", "acme", "--admin-group", "admins", env=env)).returncode == 0
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

    assert "already exists" in one_line_error(await cli("group", "create", "admins", env=env))
    assert "no group named 'ghosts'" in one_line_error(await cli("group", "add-user", "ghosts", "alice", env=env))
    assert "no user named 'zed'" in one_line_error(await cli("group", "add-user", "admins", "zed", env=env))
    assert "already exists" in one_line_error(
        await cli("provider", "create", "acme", "--admin-group", "admins", env=env)
    )
    missing = one_line_error(await cli("provider", "create", "other", "--admin-group", "ghosts", env=env))
    assert "no group named 'ghosts'" in missing


async def test_program_grant_lets_a_group_see_a_provider_program(
    env: dict[str, str], client: AsyncClient, alice: TestUser, bob: TestUser
) -> None:
    for args in (
        ("group", "create", "acme-admins"),
        ("group", "create", "acme-users"),
        ("group", "add-user", "acme-admins", "alice"),
        ("group", "add-user", "acme-users", "bob"),
        ("provider", "create", "acme", "--admin-group", "acme-admins"),
    ):
        done = await cli(*args, env=env)
        assert done.returncode == 0, done.stderr
    await upload_program(client, alice, "shared-fn", provider="acme")
    path = "/api/v1/programs/get_by_title/shared-fn/?provider=acme"
    assert (await client.get(path, headers=bob.headers)).status_code == 404

    done = await cli("program", "grant", "shared-fn", "--provider", "acme", "--group", "acme-users", "--view", env=env)
    assert done.returncode == 0, done.stderr
    assert (await client.get(path, headers=bob.headers)).status_code == 200

    missing = one_line_error(
        await cli("program", "grant", "nope", "--provider", "acme", "--group", "acme-users", "--run", env=env)
    )
    assert "has no program 'nope'" in missing


async def test_program_grant_needs_exactly_one_level(env: dict[str, str]) -> None:
    done = await cli("program", "grant", "fn", "--provider", "acme", "--group", "g", env=env)
    assert done.returncode == 2
    assert "--run" in done.stderr
    done = await cli("program", "grant", "fn", "--provider", "acme", "--group", "g", "--run", "--view", env=env)
    assert done.returncode == 2
    assert "not allowed with" in done.stderr


@pytest.mark.parametrize("command", [("user", "create", "x"), ("serve",), ("migrate",)])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path, command: tuple[str, ...]) -> None:
    env = cli_env(data_dir=str(tmp_path), max_page_size="lots")
    message = one_line_error(run_cli(*command, env=env))
    assert message.startswith("serverless-gateway: invalid setting GATEWAY_MAX_PAGE_SIZE: ")


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        env = cli_env(database_url=f"postgresql://postgres@127.0.0.1:{port}/nowhere", data_dir=str(tmp_path))
        for command in (("user", "create", "x"), ("migrate",), ("serve", "--port", "0")):
            assert "cannot use the database" in one_line_error(run_cli(*command, env=env))


def test_commands_on_an_unmigrated_database_say_to_migrate(database_url: str, tmp_path: Path) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    from tests.database import throwaway_name

    admin = make_url(database_url).set(drivername="postgresql", database="postgres")
    name = throwaway_name()

    async def admin_exec(sql: str) -> None:
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_exec(f'CREATE DATABASE "{name}"'))
    try:
        env = cli_env(database_url=make_url(database_url).set(database=name).render_as_string(hide_password=False))
        assert "serverless-gateway migrate" in one_line_error(run_cli("user", "create", "early", env=env))
        migrated = run_cli("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.startswith("database at revision ")
        again = run_cli("migrate", env=env)
        assert again.returncode == 0
        assert again.stdout == migrated.stdout
        assert run_cli("user", "create", "early", env=env).returncode == 0
    finally:
        asyncio.run(admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_serve_answers_and_stops_cleanly_on_a_signal(env: dict[str, str], tmp_path: Path, sig: int) -> None:
    env = {**env, "GATEWAY_RUN_ENGINE": "false", "GATEWAY_RAY_ADDRESS": "http://127.0.0.1:9"}
    with serving(env, tmp_path) as served:
        served.wait_live()
        assert httpx.get(f"{served.url}/api/v1/version/", timeout=5).json()["version"]
        assert httpx.get(f"{served.url}/liveness/", timeout=5).status_code == 200
        assert served.stop(sig) == 0
    output = served.output()
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
    assert "Created the user 'dev'" not in output, "a configured database gets no dev user"


def test_serve_on_a_busy_port_fails_at_once(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = str(sock.getsockname()[1])
        done = run_cli("serve", "--host", "127.0.0.1", "--port", port, env={**env, "GATEWAY_RUN_ENGINE": "false"})
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(done)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000"),
        ("0.0.0.0", 8080, "http://127.0.0.1:8080"),
        ("::", 8000, "http://[::1]:8000"),
        ("gateway.internal", 80, "http://gateway.internal:80"),
    ],
)
def test_the_default_public_url_is_reachable_from_this_machine(host: str, port: int, expected: str) -> None:
    assert default_public_url(host, port) == expected


def test_the_dispatcher_needs_a_public_url(env: dict[str, str]) -> None:
    assert "GATEWAY_PUBLIC_URL" in one_line_error(run_cli("dispatcher", env=env))


def test_the_dispatcher_runs_the_engine_until_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "GATEWAY_RAY_ADDRESS": "http://127.0.0.1:9", "GATEWAY_PUBLIC_URL": "http://127.0.0.1:8000"}
    log_path = tmp_path / "dispatcher.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*CLI, "dispatcher"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while "dispatcher running" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert "dispatcher stopped" in log_path.read_text()
