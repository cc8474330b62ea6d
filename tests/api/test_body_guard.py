"""The body guard: bodies are authenticated before they are read, counted as they arrive, capped per route."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from collections.abc import AsyncIterator, Callable

import psutil
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings
from serverless_gateway.db import create_engine_db_engine
from tests.api.jobs_support import add_job_with_token, add_program
from tests.api.programs_support import tune_settings
from tests.conftest import TestUser

__all__ = ["tune_settings"]

RUN = "/api/v1/programs/run/"
CHUNK = bytes(1024 * 1024)
MIB = 1024 * 1024


class CountedBody:
    """A request body streamed from a generator, never held in memory: counts what the client was asked for."""

    def __init__(self, total: int, *, head: bytes = b'{"title": "hello", "arguments": "'):
        self.total = total
        self.head = head
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        while self.pulled < self.total:
            self.pulled += len(CHUNK)
            yield CHUNK


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer gw_not-a-token"}, {"Authorization": "Basic x"}])
async def test_an_unauthenticated_huge_body_is_refused_unread(client: AsyncClient, headers: dict[str, str]) -> None:
    body = CountedBody(256 * MIB)
    before = rss()
    started = time.monotonic()
    response = await client.post(RUN, headers={**headers, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert set(response.json()) == {"message"}
    assert body.pulled == 0  # not one chunk of it was asked for
    assert rss() - before < 16 * MIB
    assert time.monotonic() - started < 2


async def test_an_unauthenticated_declared_body_is_refused_unread(client: AsyncClient) -> None:
    body = CountedBody(256 * MIB)
    headers = {"Content-Type": "application/json", "Content-Length": str(256 * MIB)}
    response = await client.post(RUN, headers=headers, content=body)
    assert response.status_code == 401
    assert body.pulled == 0


async def test_an_authenticated_chunked_body_stops_at_the_cap(
    client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_arguments_bytes=2 * MIB)
    body = CountedBody(256 * MIB)
    before = rss()
    response = await client.post(RUN, headers={**alice.headers, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 413, response.text
    message = response.json()["message"]
    assert "arguments of at most 2097152 bytes" in message
    assert body.pulled <= 2 * 2 * MIB + 2 * MIB  # the body cap (twice the arguments, for escaping) and a chunk
    assert rss() - before < 16 * MIB


async def test_an_authenticated_declared_body_over_the_cap_is_refused_unread(
    client: AsyncClient, alice: TestUser
) -> None:
    body = CountedBody(256 * MIB)
    headers = {**alice.headers, "Content-Type": "application/json", "Content-Length": str(256 * MIB)}
    response = await client.post(RUN, headers=headers, content=body)
    assert response.status_code == 413
    assert "arguments of at most" in response.json()["message"]
    assert body.pulled == 0


@pytest.mark.parametrize("path", ["/readiness/", "/api/v1/liveness/", "/docs", "/nowhere"])
async def test_paths_without_a_token_are_capped_too(client: AsyncClient, path: str) -> None:
    body = CountedBody(256 * MIB)
    response = await client.post(path, headers={"Content-Type": "application/json"}, content=body)
    assert response.status_code in (404, 405, 413)
    assert body.pulled <= 2 * MIB


async def test_small_json_bodies_have_the_small_cap(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_body_bytes=10_000)
    job_id, headers = await add_job_with_token(app, alice, await add_program(app, alice, "hello"))
    event = {"type": "ERROR", "message": "m" * 20_000}
    response = await client.post(f"/api/v1/jobs/{job_id}/event/", headers=headers, json=event)
    assert response.status_code == 413
    assert "at most 10000 bytes" in response.json()["message"]
    small = {"type": "ERROR", "message": "short"}
    assert (await client.post(f"/api/v1/jobs/{job_id}/event/", headers=headers, json=small)).status_code == 200


async def test_arguments_over_their_limit_answer_413(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    tune_settings(max_arguments_bytes=1000)
    # Under the body cap (2 x 1000 + 64 KiB) but over the arguments' own limit.
    arguments = json.dumps({"x": "y" * 2000})
    for path in (RUN, "/api/v1/programs/validate_arguments/"):
        response = await client.post(path, headers=alice.headers, json={"title": "hello", "arguments": arguments})
        assert response.status_code == 413, response.text
        assert "arguments are larger than the limit of 1000 bytes" in response.json()["message"]


async def test_a_slow_body_holds_no_database_connection(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id, headers = await add_job_with_token(app, alice, await add_program(app, alice, "hello"))
    pool = app.state.gateway.db_engine.pool
    checked_out: list[int] = []

    async def slow() -> AsyncIterator[bytes]:
        yield b'{"sub_status": '
        for _ in range(3):
            await asyncio.sleep(0.05)  # the client is slow: the gateway waits here
            checked_out.append(pool.checkedout())
            yield b" "
        yield b'"MAPPING"}'

    for path in ("sub_status/", "result/"):
        checked_out.clear()
        method = "PATCH" if path == "sub_status/" else "POST"
        request_headers = {**headers, "Content-Type": "application/json"}
        url = f"/api/v1/jobs/{job_id}/{path}"
        response = await client.request(method, url, headers=request_headers, content=slow())
        assert response.status_code in (200, 400), response.text
        assert checked_out == [0, 0, 0], path


async def test_database_settings_are_applied(app: FastAPI) -> None:
    async with app.state.gateway.db_engine.connect() as conn:
        idle = await conn.scalar(text("SHOW idle_in_transaction_session_timeout"))
        statement = await conn.scalar(text("SHOW statement_timeout"))
    assert (idle, statement) == ("1min", "4s")  # an API request's statements: GATEWAY_DB_REQUEST_TIMEOUT_SECONDS
    engine_pool = create_engine_db_engine(app.state.gateway.settings)
    try:
        async with engine_pool.connect() as conn:
            statement = await conn.scalar(text("SHOW statement_timeout"))
            name = await conn.scalar(text("SHOW application_name"))
        assert (statement, name) == ("30s", "serverless-gateway-engine")  # the engine's own pool
    finally:
        await engine_pool.dispose()


async def test_sql_errors_do_not_show_their_parameters(app: FastAPI) -> None:
    async with app.state.gateway.db_engine.connect() as conn:
        with pytest.raises(Exception, match="division by zero") as caught:
            await conn.execute(text("SELECT CAST(:secret AS text), 1 / 0"), {"secret": "argument-secret-value"})
    assert "argument-secret-value" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)


async def test_a_hung_database_answers_503_within_seconds(settings: Settings, alice: TestUser) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections and never answers: a hung server
    port = listener.getsockname()[1]
    hung = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x", "db_connect_timeout_seconds": 1}
    )
    application = create_app(hung)
    try:
        async with application.router.lifespan_context(application):
            transport = ASGITransport(app=application)
            async with AsyncClient(transport=transport, base_url="http://testserver") as http:
                for method, path, body in (("GET", "/api/v1/programs/", None), ("POST", RUN, {"title": "x"})):
                    started = time.monotonic()
                    response = await http.request(method, path, headers=alice.headers, json=body)
                    assert response.status_code == 503, response.text
                    assert "database is unavailable" in response.json()["message"]
                    assert time.monotonic() - started < 5
    finally:
        listener.close()



async def test_a_real_server_answers_a_refused_stream_and_keeps_nothing(app: FastAPI, alice: TestUser) -> None:
    """Over uvicorn the client must still read the 401/413 while it is sending (no reset), and RSS stays flat."""
    import uvicorn

    from serverless_gateway.engine.local_ray import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        before = rss()
        async with AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for headers, expected in (({}, 401), (alice.headers, 413)):
                body = CountedBody(128 * MIB)
                response = await http.post(RUN, headers={**headers, "Content-Type": "application/json"}, content=body)
                assert response.status_code == expected, response.text
            assert (await http.get("/api/v1/liveness/")).status_code == 200  # the connection is still good
        assert rss() - before < 16 * MIB
    finally:
        server.should_exit = True
        await serving


@pytest.mark.parametrize("as_string", [False, True])
async def test_deeply_nested_arguments_are_a_400(client: AsyncClient, alice: TestUser, as_string: bool) -> None:
    nested = '{"a": ' * 50_000 + "1" + "}" * 50_000
    arguments = json.dumps(nested) if as_string else nested
    body = '{"title": "hello", "arguments": ' + arguments + "}"
    for path in (RUN, "/api/v1/programs/validate_arguments/"):
        response = await client.post(path, headers={**alice.headers, "Content-Type": "application/json"}, content=body)
        assert response.status_code == 400, response.text
        expected = "nested too deeply" if as_string else "error parsing the body"
        assert expected in response.json()["message"]


async def test_database_timeouts_count_as_outages(app: FastAPI) -> None:
    from serverless_gateway.errors import is_database_outage

    engine = app.state.gateway.db_engine
    async with engine.connect() as conn:
        await conn.execute(text("SET LOCAL statement_timeout = '50ms'"))  # undone by the rollback
        with pytest.raises(DBAPIError) as cancelled:
            await conn.execute(text("SELECT pg_sleep(2)"))
        await conn.rollback()
    assert is_database_outage(cancelled.value)
    async with engine.connect() as conn:
        await conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = '50ms'"))
        await conn.execute(text("SELECT 1"))
        await asyncio.sleep(0.3)  # idle inside the transaction: PostgreSQL ends the session
        with pytest.raises(DBAPIError) as ended:
            await conn.execute(text("SELECT 1"))
    assert is_database_outage(ended.value)
    with pytest.raises(DBAPIError) as other:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_database_outage(other.value)
