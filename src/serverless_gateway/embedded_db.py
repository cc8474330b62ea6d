"""The embedded PostgreSQL (pgserver) used when no GATEWAY_DATABASE_URL is set."""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

DATABASE_NAME = "gateway"


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL could not be started."""


HANDLES_FILE = ".handle_pids.json"


def _get_server(pgdata: Path) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR when pgserver is imported; it falls back fine.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer, get_server

        # pgserver stops the server when the last process using it exits, counting processes in a file that
        # a killed process never leaves: forget the dead ones, or the server would never be stopped again.
        with PostgresServer._lock:
            _forget_dead_handles(pgdata / HANDLES_FILE)
        return get_server(pgdata, cleanup_mode="stop")


def _forget_dead_handles(handles: Path) -> None:
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        logger.info("forgetting %d exited process(es) that used the embedded PostgreSQL", len(pids) - len(alive))
        handles.write_text(json.dumps(alive))


def asyncpg_url(server_uri: str, database: str) -> str:
    """pgserver's `postgresql://postgres:@/postgres?host=/socket/dir` as a SQLAlchemy asyncpg URL."""
    url = make_url(server_uri).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def _ensure_database(server_uri: str, database: str) -> None:
    conn = await asyncpg.connect(server_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `pgdata`; reuses one already running there."""

    def __init__(self, pgdata: Path, *, database: str = DATABASE_NAME):
        self.pgdata = pgdata.expanduser().resolve()
        self.database = database
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise EmbeddedDatabaseError("the embedded PostgreSQL is not running")
        return asyncpg_url(self._server.get_uri(), self.database)

    def start(self) -> str:
        """Start (or attach to) the server, create the gateway's database, return its asyncpg URL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = _get_server(self.pgdata)
            asyncio.run(_ensure_database(self._server.get_uri(), self.database))
        except Exception as exc:
            self.stop()
            raise EmbeddedDatabaseError(
                f"cannot start the embedded PostgreSQL in {self.pgdata} ({type(exc).__name__}: {exc}); "
                f"see {self.pgdata / 'log'}, or set GATEWAY_DATABASE_URL"
            ) from exc
        logger.info("embedded PostgreSQL ready in %s", self.pgdata)
        return self.url

    def stop(self) -> None:
        """Stop the server unless another process (a running `serve`) still uses it."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """The asyncpg URL of the embedded database under `<data_dir>/postgres`, stopped on exit."""
    database = EmbeddedPostgres(data_dir / "postgres")
    url = database.start()
    try:
        yield url
    finally:
        database.stop()
