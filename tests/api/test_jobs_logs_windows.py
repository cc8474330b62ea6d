"""Log windows for polling readers: `?offset=` (whole lines, with `next_offset`) and `?tail=N`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.services import log_windows
from serverless_gateway.services.logs import split_logs
from tests.api.jobs_support import add_job, add_program
from tests.api.programs_support import make_provider
from tests.api.test_jobs_logs import big_log

if TYPE_CHECKING:
    from tests.conftest import TestUser

JOBS = "/api/v1/jobs/"
WINDOW = 64 * 1024


@pytest.fixture
async def carol(make_user: Any) -> TestUser:
    user: TestUser = await make_user("carol")
    return user


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_windows, "MAX_WINDOW_BYTES", WINDOW)


async def poll(client: AsyncClient, url: str, user: TestUser, start: int = 0) -> tuple[list[str], int]:
    pieces, offset = [], start
    for _ in range(1000):
        response = await client.get(url, headers=user.headers, params={"offset": offset})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"logs", "next_offset"}
        if body["next_offset"] == offset:
            assert body["logs"] == ""
            return pieces, offset
        pieces.append(body["logs"])
        offset = body["next_offset"]
    raise AssertionError("polling never reached the end")


@pytest.mark.usefixtures("small_windows")
async def test_polling_by_offset_reads_the_whole_log_once(
    app: FastAPI, client: AsyncClient, alice: TestUser, carol: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = big_log()
    storage = app.state.gateway.storage
    await storage.put_bytes("logs/windows.log", data)
    await make_provider(app, "acme", carol)
    solver = await add_program(app, carol, "solver", provider="acme")
    job_id = await add_job(app, alice, solver, status="SUCCEEDED", logs_key="logs/windows.log")

    served: list[int] = []
    original = storage.open_stream

    async def counted(*args: Any, **kwargs: Any) -> Any:
        total = 0
        async for chunk in original(*args, **kwargs):
            total += len(chunk)
            yield chunk
        served.append(total)

    monkeypatch.setattr(storage, "open_stream", counted)
    pieces, end = await poll(client, f"{JOBS}{job_id}/logs/", alice)
    assert end == len(data)
    assert len(pieces) > len(data) // WINDOW
    whole = data.decode("utf-8", errors="replace")
    assert "".join(pieces) == split_logs(whole, for_provider=False)
    assert "PRIVATE" not in "".join(pieces)
    assert max(served) <= WINDOW + 256 * 1024 + 1  # a window and one chunk at most, never the log

    provider, end = await poll(client, f"{JOBS}{job_id}/provider-logs/", carol)
    assert "".join(provider) == whole
    assert all(piece.endswith("\n") for piece in provider[:-1])


async def test_an_offset_inside_a_line_starts_at_the_next(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    text = "first line\n[PRIVATE] secret of a provider\nthird\n"
    await app.state.gateway.storage.put_bytes("logs/mid.log", text.encode())
    job_id = await add_job(
        app, alice, await add_program(app, alice, "own"), status="SUCCEEDED", logs_key="logs/mid.log"
    )
    url = f"{JOBS}{job_id}/logs/"
    at = text.index("secret")
    body = (await client.get(url, headers=alice.headers, params={"offset": at})).json()
    assert body == {"logs": "third\n", "next_offset": len(text)}
    body = (await client.get(url, headers=alice.headers, params={"offset": text.index("[PRIVATE]")})).json()
    assert body["logs"].startswith("[PRIVATE] secret")  # a line start: the whole line (the author's own function)
    body = (await client.get(url, headers=alice.headers, params={"offset": 10_000})).json()
    assert body["logs"] == ""


@pytest.mark.usefixtures("small_windows")
async def test_tail(app: FastAPI, client: AsyncClient, alice: TestUser, carol: TestUser) -> None:
    lines = [f"[PRIVATE] p{i}\n" if i % 2 else f"line {i} {'x' * 2000}\n" for i in range(100)]  # > a window
    await app.state.gateway.storage.put_bytes("logs/tail.log", "".join(lines).encode())
    await make_provider(app, "acme", carol)
    solver = await add_program(app, carol, "solver", provider="acme")
    job_id = await add_job(app, alice, solver, status="SUCCEEDED", logs_key="logs/tail.log")
    size = len("".join(lines).encode())
    body = (await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers, params={"tail": 3})).json()
    assert body == {"logs": "".join(lines[94:100:2]), "next_offset": size}
    body = (await client.get(f"{JOBS}{job_id}/provider-logs/", headers=carol.headers, params={"tail": 2})).json()
    assert body == {"logs": lines[98] + lines[99], "next_offset": size}
    both = await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers, params={"tail": 3, "offset": 0})
    assert both.status_code == 400
    for bad in ({"tail": 0}, {"tail": 10_001}, {"offset": -1}):
        assert (await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers, params=bad)).status_code == 400


async def test_a_job_without_logs_has_an_empty_window(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "quiet"), status="QUEUED")
    body = (await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers, params={"offset": 0})).json()
    assert body == {"logs": "", "next_offset": 0}
    body = (await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers, params={"tail": 10})).json()
    assert body == {"logs": "", "next_offset": 0}
