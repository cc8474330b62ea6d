"""Logs endpoints stream stored logs from storage: same bodies as before, never the whole object at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.services.logs import LOG_CHUNK_SIZE, split_logs
from serverless_gateway.storage.base import StorageUnavailable
from tests.api.jobs_support import add_job, add_program
from tests.api.programs_support import make_provider

if TYPE_CHECKING:
    from tests.conftest import TestUser

JOBS = "/api/v1/jobs/"


def body_of(text: str) -> bytes:
    """The body FastAPI rendered for `JobLogsOut(logs=text)` before logs were streamed."""
    return json.dumps({"logs": text}, ensure_ascii=False, separators=(",", ":")).encode()


def big_log() -> bytes:
    """~1.5 MB spanning several storage chunks, with multi-byte characters and `\\r\\n` across chunk edges."""
    lines = []
    for number in range(12_000):
        tag = ("[PUBLIC] ", "[PRIVATE] ", "")[number % 3]
        lines.append(f'{tag}line {number} é漢😀 "quoted" \\ \t\x01 {"x" * (number % 97)}\r\n')
    data = "".join(lines).encode() + b"\xff broken \xe6"
    assert len(data) > 4 * LOG_CHUNK_SIZE
    return data


@pytest.fixture
def no_whole_reads(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a whole stored log at once is what streaming replaces: make it fail."""

    async def refuse(key: str) -> bytes:
        raise AssertionError(f"get_bytes({key!r}) called")

    monkeypatch.setattr(app.state.gateway.storage, "get_bytes", refuse)


@pytest.mark.usefixtures("no_whole_reads")
async def test_large_user_logs_stream_unchanged(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    data = big_log()
    await app.state.gateway.storage.put_bytes("logs/big-own.log", data)
    program = await add_program(app, alice, "hello")
    job_id = await add_job(app, alice, program, status="SUCCEEDED", logs_key="logs/big-own.log")
    response = await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == body_of(data.decode("utf-8", errors="replace"))


@pytest.mark.usefixtures("no_whole_reads")
async def test_large_provider_logs_stream_split(
    app: FastAPI, client: AsyncClient, make_user: Callable[..., Any], alice: TestUser
) -> None:
    carol = await make_user("carol")
    await make_provider(app, "acme", carol)
    solver = await add_program(app, carol, "solver", provider="acme")
    data = big_log()
    await app.state.gateway.storage.put_bytes("logs/big-provider.log", data)
    job_id = await add_job(app, alice, solver, status="SUCCEEDED", logs_key="logs/big-provider.log")
    text = data.decode("utf-8", errors="replace")

    user = await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers)
    assert user.status_code == 200
    assert user.content == body_of(split_logs(text, for_provider=False))
    assert "secret" not in user.text
    assert "[PRIVATE]" not in user.json()["logs"]
    provider = await client.get(f"{JOBS}{job_id}/provider-logs/", headers=carol.headers)
    assert provider.status_code == 200
    assert provider.content == body_of(text)


async def test_missing_stored_logs_read_empty(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id = await add_job(app, alice, program, status="FAILED", logs_key="logs/never-written.log")
    await app.state.gateway.storage.put_bytes("logs/empty.log", b"")
    empty = await add_job(app, alice, program, status="SUCCEEDED", logs_key="logs/empty.log")
    for found in (job_id, empty):
        response = await client.get(f"{JOBS}{found}/logs/", headers=alice.headers)
        assert response.status_code == 200
        assert response.content == b'{"logs":""}'


async def test_storage_outage_answers_503_before_streaming(
    app: FastAPI, client: AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = app.state.gateway.storage
    await storage.put_bytes("logs/outage.log", b"hello\n")
    program = await add_program(app, alice, "hello")
    job_id = await add_job(app, alice, program, status="SUCCEEDED", logs_key="logs/outage.log")

    def unavailable(key: str, *, chunk_size: int = 0) -> Any:
        async def chunks() -> Any:
            raise StorageUnavailable("storage is down")
            yield b""  # pragma: no cover

        return chunks()

    monkeypatch.setattr(storage, "open_stream", unavailable)
    response = await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers)
    assert response.status_code == 503
    assert "message" in response.json()
