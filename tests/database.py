"""Find a PostgreSQL server for the tests and make a throwaway database on it."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def server_url() -> tuple[str, Any]:
    """`GATEWAY_TEST_DATABASE_URL`, else 127.0.0.1:5432 if it answers, else an embedded server."""
    explicit = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if explicit:
        return explicit, None
    if _port_open("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres", None
    import pgserver

    server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="gw-test-pg-")), cleanup_mode="stop")
    return server.get_uri(), server


def async_url(url: str, database: str) -> str:
    parsed = make_url(url).set(drivername="postgresql+asyncpg", database=database)
    return parsed.render_as_string(hide_password=False)


def throwaway_name() -> str:
    return f"gw_test_{uuid.uuid4().hex[:12]}"
