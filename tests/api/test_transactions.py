"""Per-request transactions: a GET runs its statements in AUTOCOMMIT (no BEGIN/COMMIT round trips), a write in one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.auth import TokenCache
from tests.api.programs_support import RUN
from tests.conftest import TestUser, upload_program

CONTROL = {"BEGIN", "COMMIT", "ROLLBACK"}


class Wire:
    """What the app's connections sent: asyncpg's logged queries (BEGIN, COMMIT, and statements run straight
    through asyncpg), and the statements run through SQLAlchemy."""

    def __init__(self) -> None:
        self.simple: list[str] = []
        self.statements: list[str] = []
        self.logged: list[Any] = []

    def on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        raw = dbapi_connection.driver_connection  # the asyncpg connection under SQLAlchemy's adapter
        if all(raw is not seen for seen in self.logged):
            self.logged.append(raw)
            raw.add_query_logger(self.on_query)

    def on_query(self, record: Any) -> None:
        self.simple.append(record.query.strip().rstrip(";").split()[0].upper())

    def on_statement(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        self.statements.append(statement.split()[0].upper())

    @property
    def control(self) -> list[str]:
        """The transaction control statements sent, in order."""
        return [query for query in self.simple if query in CONTROL]

    async def clear(self) -> None:
        """Forget what was sent so far, once asyncpg has handed over the queries it logged (with call_soon: the
        last of an earlier request may come after its answer)."""
        await asyncio.sleep(0.01)
        self.simple.clear()
        self.statements.clear()


@pytest.fixture
def wire(app: FastAPI) -> Iterator[Wire]:
    seen = Wire()
    engine = app.state.gateway.db_engine.sync_engine
    event.listen(engine, "checkout", seen.on_checkout)
    event.listen(engine, "before_cursor_execute", seen.on_statement)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", seen.on_checkout)
        event.remove(engine, "before_cursor_execute", seen.on_statement)
        for raw in seen.logged:
            raw.remove_query_logger(seen.on_query)


async def _settled(wire: Wire, expected: int = 0) -> None:
    """Wait for the `expected` simple queries, then a moment for any more.

    asyncpg hands logged queries to its loggers with call_soon, and an error's response is sent before the
    request's dependencies close (its ROLLBACK comes a few steps after the client has the answer).
    """
    deadline = asyncio.get_running_loop().time() + 5
    while len(wire.control) < expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


async def test_a_job_list_sends_no_begin_or_commit(client: AsyncClient, alice: TestUser, wire: Wire) -> None:
    await upload_program(client, alice, "hello")
    assert (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).status_code == 200
    await wire.clear()
    response = await client.get("/api/v1/jobs/", params={"limit": 10}, headers=alice.headers)
    await _settled(wire)
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 1
    # The token look-up (the tests' cache is off) through SQLAlchemy; the page, its count riding along, straight
    # through asyncpg: each its own round trip.
    assert wire.statements == ["SELECT"], wire.statements
    assert wire.simple == ["SELECT"], wire.simple
    assert wire.control == [], f"a GET sent {wire.simple}"


@pytest.mark.parametrize("path", ["/api/v1/programs/", "/api/v1/jobs/{job}/", "/api/v1/jobs/{job}/events/"])
async def test_other_reads_send_no_begin_or_commit(
    client: AsyncClient, alice: TestUser, wire: Wire, path: str
) -> None:
    await upload_program(client, alice, "hello")
    job = (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).json()["id"]
    await wire.clear()
    response = await client.get(path.format(job=job), headers=alice.headers)
    await _settled(wire)
    assert response.status_code == 200, response.text
    assert wire.statements, "the request ran no statement through the app's engine"
    assert wire.control == []


async def test_a_run_keeps_its_transaction(client: AsyncClient, alice: TestUser, wire: Wire) -> None:
    await upload_program(client, alice, "hello")
    await wire.clear()
    response = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    await _settled(wire, 2)
    assert response.status_code == 200, response.text
    assert wire.control == ["BEGIN", "COMMIT"], wire.simple  # the token look-up (tests: no cache) autocommits
    assert wire.simple == ["BEGIN", "SELECT", "WITH", "COMMIT"]  # the look-up with the lock; insert + notify
    assert wire.statements == ["SELECT"]  # the token, through SQLAlchemy


async def test_a_refused_run_rolls_back(client: AsyncClient, alice: TestUser, wire: Wire) -> None:
    await wire.clear()
    response = await client.post(RUN, headers=alice.headers, json={"title": "nothing-here"})
    await _settled(wire, 2)
    assert response.status_code == 404, response.text
    assert wire.control == ["BEGIN", "ROLLBACK"]


async def test_reads_and_writes_alternating_on_the_pool_each_keep_their_mode(
    client: AsyncClient, alice: TestUser, wire: Wire
) -> None:
    """Connections go back to the pool in the engine's own isolation level, whichever session used them."""
    await upload_program(client, alice, "hello")
    for _ in range(3):
        await wire.clear()
        assert (await client.get("/api/v1/jobs/", headers=alice.headers)).status_code == 200
        assert (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).status_code == 200
        await _settled(wire, 2)
        assert wire.control == ["BEGIN", "COMMIT"]


async def test_a_run_with_a_bad_token_opens_no_transaction(client: AsyncClient, wire: Wire) -> None:
    """The run's transaction is lazy: a caller who is refused at the door costs no BEGIN nor connection."""
    await wire.clear()
    response = await client.post(RUN, headers={"Authorization": "Bearer gw_nope"}, json={"title": "hello"})
    await _settled(wire)
    assert response.status_code == 401, response.text
    assert wire.control == []


async def test_a_run_over_the_limit_rolls_back_and_wakes_nobody(
    app: FastAPI, client: AsyncClient, alice: TestUser, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    await upload_program(client, alice, "hello")
    state = app.state.gateway
    monkeypatch.setattr(state, "settings", state.settings.model_copy(update={"max_active_jobs_per_user": 1}))
    woken: list[int] = []
    monkeypatch.setattr(state, "wake_dispatcher", lambda: woken.append(1))
    assert (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).status_code == 200
    assert woken == [1]
    await wire.clear()
    response = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    await _settled(wire, 2)
    assert response.status_code == 429, response.text
    assert wire.control == ["BEGIN", "ROLLBACK"]
    assert woken == [1]


@pytest.fixture
async def restart_database(app: FastAPI, db_engine: AsyncEngine) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Terminate every connection of the app's pool, as a database restart would (it answers how many there
    were); afterwards the pool is emptied, so that no later test meets a connection killed here."""

    async def kill() -> int:
        async with db_engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'serverless-gateway'"
                )
            )
        return int(killed or 0)

    yield kill
    await app.state.gateway.db_engine.dispose()


async def test_a_connection_the_server_closed_costs_no_run(
    app: FastAPI, alice: TestUser, restart_database: Callable[[], Awaitable[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy does not see the run's asyncpg errors: the run's own scope must drop a connection that died."""
    monkeypatch.setattr(app.state.gateway, "token_cache", TokenCache(60))  # runs then touch only their own path
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        await upload_program(client, alice, "hello")
        assert (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).status_code == 200
        assert await restart_database()
        run = {"title": "hello"}
        codes = [(await client.post(RUN, headers=alice.headers, json=run)).status_code for _ in range(6)]
    # A dead pooled connection fails at BEGIN, before the run did anything: it is dropped and the run goes on
    # on the next connection (a database restart costs no request).
    assert codes == [200] * len(codes), codes


async def test_a_connection_the_server_closed_costs_no_list(
    app: FastAPI, alice: TestUser, restart_database: Callable[[], Awaitable[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list page is read straight through asyncpg, which SQLAlchemy does not see: a pooled connection the server
    closed is dropped there, and the read runs again on the next one."""
    monkeypatch.setattr(app.state.gateway, "token_cache", TokenCache(60))  # lists then touch only their own path
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        await upload_program(client, alice, "hello")
        assert (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).status_code == 200
        # Several connections in the pool, all of them then killed at once.
        pages = [client.get("/api/v1/jobs/", headers=alice.headers) for _ in range(4)]
        assert all(page.status_code == 200 for page in await asyncio.gather(*pages))
        assert await restart_database()
        answers = [await client.get("/api/v1/jobs/", headers=alice.headers) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * len(answers), [a.text for a in answers]
    assert all(answer.json()["count"] == 1 for answer in answers)
    pool = app.state.gateway.db_engine.sync_engine.pool
    assert pool.checkedout() == 0  # every connection went back (or was dropped)


async def test_a_list_with_a_cached_token_opens_no_session(
    app: FastAPI, client: AsyncClient, alice: TestUser, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hottest read: the token from the cache, then one statement through asyncpg; SQLAlchemy runs nothing."""
    monkeypatch.setattr(app.state.gateway, "token_cache", TokenCache(60))
    assert (await client.get("/api/v1/jobs/", headers=alice.headers)).status_code == 200  # caches the token
    await wire.clear()
    response = await client.get("/api/v1/jobs/", params={"status": "QUEUED"}, headers=alice.headers)
    await _settled(wire)
    assert response.status_code == 200, response.text
    assert wire.statements == []
    assert wire.simple == ["SELECT"]
