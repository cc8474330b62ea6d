"""The embedded PostgreSQL: a real server under the data dir, migrated, used by the CLI and by `serve`."""

from __future__ import annotations

import asyncio
import importlib.metadata
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from serverless_gateway.embedded_db import EmbeddedPostgres, asyncpg_url
from serverless_gateway.schema import (
    INSTALLED_SUFFIX,
    MigrationsNotFound,
    current_revision,
    find_migrations,
    head_revision,
    migrations_dir,
    upgrade_database,
)
from tests.cli_support import cli_env, kill_postgres, postgres_processes, run_cli, serving


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir outside pytest's tmp_path, whose embedded PostgreSQL is stopped if a failed test left it running.

    As root, pgserver runs PostgreSQL as a `pgserver` user and opens up the parent directories for it; pytest
    sets /tmp/pytest-of-<user> back to 0700 whenever another session starts, which would lock that user out.
    """
    path = Path(tempfile.mkdtemp(prefix="gw-embedded-")) / "data"
    yield path
    kill_postgres(path / "postgres")
    shutil.rmtree(path.parent, ignore_errors=True)


def _sync_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _fetch(url: str, sql: str) -> object:
    conn = await asyncpg.connect(_sync_dsn(url))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_asyncpg_url_keeps_the_socket_directory() -> None:
    url = asyncpg_url("postgresql://postgres:@/postgres?host=/tmp/pg sock", "gateway")
    parsed = make_url(url)
    assert parsed.drivername == "postgresql+asyncpg"
    assert parsed.database == "gateway"
    assert parsed.query["host"] == "/tmp/pg sock"


def test_embedded_postgres_starts_migrates_stops_and_keeps_its_data(data_dir: Path) -> None:
    database = EmbeddedPostgres(data_dir / "postgres")
    url = database.start()
    try:
        assert make_url(url).database == "gateway"
        assert postgres_processes(data_dir / "postgres")
        assert asyncio.run(current_revision(url)) is None
        asyncio.run(upgrade_database(url))
        assert asyncio.run(current_revision(url)) == head_revision()
        asyncio.run(upgrade_database(url))  # a second run is a no-op
        version = asyncio.run(_fetch(url, "SHOW server_version"))
        assert str(version).split(".")[0].isdigit()
        asyncio.run(_fetch(url, "INSERT INTO \"user\" (id, username) VALUES (gen_random_uuid(), 'kept') RETURNING 1"))
    finally:
        database.stop()
    assert not postgres_processes(data_dir / "postgres")

    again = EmbeddedPostgres(data_dir / "postgres")
    url = again.start()
    try:
        assert asyncio.run(_fetch(url, 'SELECT username FROM "user"')) == "kept"
    finally:
        again.stop()
    assert not postgres_processes(data_dir / "postgres")


def test_a_server_left_by_a_killed_process_is_stopped_by_the_next_one(data_dir: Path) -> None:
    """`serve` killed with SIGKILL leaves PostgreSQL running; the next start takes it over and stops it on exit."""
    pgdata = data_dir / "postgres"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from serverless_gateway.embedded_db import EmbeddedPostgres;"
            f"EmbeddedPostgres(Path({str(pgdata)!r})).start(); print('ready', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert postgres_processes(pgdata), "the killed process could not stop its server"

    database = EmbeddedPostgres(pgdata)
    url = database.start()
    assert asyncio.run(_fetch(url, "SELECT 1")) == 1
    database.stop()
    assert not postgres_processes(pgdata)


def test_admin_commands_use_the_embedded_database_and_stop_it(data_dir: Path) -> None:
    env = cli_env(data_dir=str(data_dir))
    created = run_cli("user", "create", "erin", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("gw_")
    assert not postgres_processes(data_dir / "postgres"), "the command stops the server it started"
    second = run_cli("token", "create", "erin", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() != created.stdout.strip()
    assert not postgres_processes(data_dir / "postgres")


def test_serve_on_the_embedded_database_creates_dev_once(data_dir: Path, tmp_path: Path) -> None:
    env = cli_env(data_dir=str(data_dir), run_engine="false")
    with serving(env, tmp_path) as first:
        first.wait_live()
        # Not a terminal: the token is not in the output but in a file only its owner may read.
        assert "gw_" not in first.output()
        token_file = data_dir / "dev-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert str(token_file.resolve()) in first.output()
        token = token_file.read_text().strip()
        response = httpx.get(f"{first.url}/api/v1/programs/", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 200, response.text
        # An admin command while `serve` runs shares its server and leaves it running.
        assert run_cli("user", "create", "frank", env=env).returncode == 0
        assert httpx.get(f"{first.url}/api/v1/readiness/", timeout=10).status_code == 200
        assert first.stop(signal.SIGTERM) == 0
    assert "Created the user 'dev'" in first.output()
    assert not postgres_processes(data_dir / "postgres"), "serve stops the embedded PostgreSQL"

    with serving(env, tmp_path) as second:
        second.wait_live()
        assert second.stop(signal.SIGTERM) == 0
    assert "Created the user 'dev'" not in second.output(), "the dev user is created on the first start only"
    assert not postgres_processes(data_dir / "postgres")


def test_the_checkout_migrations_are_found() -> None:
    assert (migrations_dir() / "env.py").is_file()
    assert any((migrations_dir() / "versions").glob("*.py"))


class _FakeFile:
    def __init__(self, path: Path, relative: str):
        self.path = path
        self.relative = relative

    def as_posix(self) -> str:
        return self.relative

    def locate(self) -> Path:
        return self.path


class _FakeDistribution:
    def __init__(self, files: list[_FakeFile]):
        self.files = files


def test_installed_migrations_are_found_through_the_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wheel install has no checkout: the data files listed by the distribution are used."""
    installed = tmp_path / "venv" / "share" / "serverless-gateway" / "migrations"
    installed.mkdir(parents=True)
    (installed / "env.py").write_text("")
    files = [_FakeFile(installed / "env.py", "../../../" + INSTALLED_SUFFIX)]
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: _FakeDistribution(files))
    assert find_migrations(tmp_path / "no-checkout", "serverless-gateway") == installed

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: _FakeDistribution([]))
    with pytest.raises(MigrationsNotFound):
        find_migrations(tmp_path / "no-checkout", "serverless-gateway")
