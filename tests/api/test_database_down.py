"""With the database unreachable or too slow, API requests answer a 503 envelope quickly; bugs stay 500s."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy.exc
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from serverless_gateway.config import Settings
from serverless_gateway.errors import database_unavailable
from tests.api.test_metrics import new_user, own_app


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A database URL whose port is bound but not listening: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{sock.getsockname()[1]}/nowhere"


async def test_api_requests_answer_503_when_the_database_is_unreachable(settings: Settings, refused_url: str) -> None:
    async with own_app(settings, database_url=refused_url) as (_, client):
        auth = {"Authorization": "Bearer gw_whatever"}
        calls = [
            client.get("/api/v1/jobs/", headers=auth),
            client.post("/api/v1/programs/run/", headers=auth, json={"title": "hello"}),
            client.get("/api/v1/programs/", headers=auth),
        ]
        for call in calls:
            began = time.monotonic()
            answer = await call
            assert answer.status_code == 503, answer.text
            assert answer.json() == {"message": "The database is unavailable right now; try again later."}
            assert time.monotonic() - began < 5
        ready = await client.get("/readiness/")
        assert ready.status_code == 503
        assert ready.json()["down"] == ["database"]


async def test_a_statement_timeout_is_unavailable_and_a_constraint_error_is_not(database_url: str) -> None:
    engine = create_async_engine(database_url, connect_args={"server_settings": {"statement_timeout": "50"}})
    try:
        async with engine.connect() as conn:
            with pytest.raises(sqlalchemy.exc.DBAPIError) as slow:
                await conn.execute(text("SELECT pg_sleep(2)"))
        assert database_unavailable(slow.value)
        async with engine.connect() as conn:
            with pytest.raises(sqlalchemy.exc.IntegrityError) as clash:
                await conn.execute(text('INSERT INTO "user" (id, username) VALUES (gen_random_uuid(), NULL)'))
        assert not database_unavailable(clash.value)
    finally:
        await engine.dispose()


async def test_bound_values_never_appear_in_database_error_logs(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "gw_secret_token_value_123"
    async with own_app(settings) as (app, client):

        @app.get("/_test/db-error")
        async def bad_query() -> None:
            async with app.state.gateway.db_engine.connect() as conn:
                await conn.execute(text("SELECT CAST(:v AS integer)"), {"v": secret})

        with caplog.at_level(logging.DEBUG):
            answer = await client.get("/_test/db-error")
    assert answer.status_code == 500
    assert answer.json() == {"message": "Internal server error."}
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "unhandled database error" in logged
    assert "bad_query" in logged  # the frames are kept
    assert secret not in logged
    assert secret not in caplog.text


async def test_readiness_answers_within_a_second_when_the_database_hangs(settings: Settings) -> None:
    """A server that accepts connections and never answers: a frozen PostgreSQL, as seen from the pool."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with own_app(settings, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/hung") as (
            _,
            client,
        ):
            for _ in range(2):
                # What any answer costs right now (the machine may be busy), measured beside it.
                began = time.monotonic()
                assert (await client.get("/api/v1/liveness/")).status_code == 200
                floor = time.monotonic() - began
                began = time.monotonic()
                ready = await client.get("/api/v1/readiness/")
                assert ready.status_code == 503
                assert ready.json()["down"] == ["database"]
                assert time.monotonic() - began < 1 + floor
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


class FreezableProxy:
    """A TCP relay to PostgreSQL that can stop relaying (a frozen server, as pooled connections see it)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.running = asyncio.Event()
        self.running.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.running.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.running.wait()  # a frozen server accepts (the kernel does) but never answers
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, upstream_writer]
        for task in (self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)):
            running = asyncio.create_task(task)
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc_info: object) -> None:
        self.running.set()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        self._server.close()


@asynccontextmanager
async def _behind_a_freezable_proxy(
    settings: Settings, username: str, **changes: Any
) -> AsyncIterator[tuple[FastAPI, AsyncClient, FreezableProxy, dict[str, str]]]:
    """An app of its own whose database connections all pass a proxy that can freeze, and a user's headers."""
    url = make_url(settings.database_url or "")
    proxy = FreezableProxy(url.host or "127.0.0.1", url.port or 5432)
    async with proxy as port:
        proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        async with own_app(settings, database_url=proxied, **changes) as (app, client):
            user = await new_user(app, username)
            yield app, client, proxy, {"Authorization": f"Bearer {user.token}"}


async def test_with_the_database_hung_every_request_answers_503_within_5_s_then_resumes(settings: Settings) -> None:
    async with _behind_a_freezable_proxy(settings, "frozen", token_cache_seconds=0.0) as (app, client, proxy, headers):
        assert (await client.get("/api/v1/jobs/", headers=headers)).status_code == 200
        proxy.running.clear()  # PostgreSQL freezes: pooled connections and new ones alike get no answer
        calls = [
            client.get("/api/v1/jobs/", headers=headers),
            client.post("/api/v1/programs/run/", headers=headers, json={"title": "hello"}),
            client.get("/api/v1/programs/", headers=headers),
            client.get("/api/v1/files/", headers=headers, params={"function": "hello"}),
        ]
        began = time.monotonic()
        answers = await asyncio.gather(*calls)
        elapsed = time.monotonic() - began
        assert [answer.status_code for answer in answers] == [503] * len(calls), [a.text for a in answers]
        assert answers[0].json() == {"message": "The database is unavailable right now; try again later."}
        assert elapsed < 5.0, elapsed  # GATEWAY_DB_REQUEST_TIMEOUT_SECONDS (4 s) and a little
        proxy.running.set()  # it thaws: the API serves again without a restart
        deadline = time.monotonic() + 10
        while (await client.get("/api/v1/jobs/", headers=headers)).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover after the database thawed"
            await asyncio.sleep(0.2)


async def test_with_the_database_hung_a_list_from_a_cached_token_answers_503_within_5_s(settings: Settings) -> None:
    """The list page is read straight through asyncpg (no session): its read is bounded all the same, and the
    pooled connection it waited on serves again once the database thaws."""
    frozen = _behind_a_freezable_proxy(settings, "frozen-list", token_cache_seconds=300.0)
    async with frozen as (app, client, proxy, headers):
        assert (await client.get("/api/v1/jobs/", headers=headers)).status_code == 200  # the token is cached
        proxy.running.clear()
        began = time.monotonic()
        answers = await asyncio.gather(*(client.get("/api/v1/jobs/", headers=headers) for _ in range(3)))
        elapsed = time.monotonic() - began
        assert [answer.status_code for answer in answers] == [503] * 3, [a.text for a in answers]
        assert elapsed < 5.0, elapsed
        proxy.running.set()
        deadline = time.monotonic() + 10
        while (await client.get("/api/v1/jobs/", headers=headers)).status_code != 200:
            assert time.monotonic() < deadline, "the list did not recover after the database thawed"
            await asyncio.sleep(0.2)
        assert app.state.gateway.db_engine.sync_engine.pool.checkedout() == 0
