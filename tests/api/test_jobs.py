"""Jobs API: lists (filters, pagination links), one job, results, logs, stop, sub-status, events, runtime jobs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.models import JobEvent
from tests.api.jobs_support import add_job, add_job_with_token, add_program, job_columns
from tests.api.programs_support import RUN, make_provider, tune_settings
from tests.conftest import upload_program

if TYPE_CHECKING:
    from tests.conftest import TestUser

__all__ = ["tune_settings"]

JOBS = "/api/v1/jobs/"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def job_url(job_id: uuid.UUID | str, tail: str = "") -> str:
    return f"{JOBS}{job_id}/{tail}"


async def events_of(app: FastAPI, job_id: uuid.UUID) -> list[JobEvent]:
    from sqlalchemy import select

    async with app.state.gateway.sessionmaker() as session:
        return list((await session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))).all())


# ---------------------------------------------------------------- lists


async def test_list_shape_newest_first(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    ids = [await add_job(app, alice, program, created_at=T0 + timedelta(minutes=i)) for i in range(3)]
    response = await client.get(JOBS, headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 3
    assert body["next"] is None
    assert body["previous"] is None
    assert [item["id"] for item in body["results"]] == [str(i) for i in reversed(ids)]
    first = body["results"][0]
    assert set(first) == {"id", "status", "sub_status", "program", "created", "updated", "started", "finished"}
    assert first["status"] == "QUEUED"
    assert first["program"] == {"id": str(program), "title": "hello", "provider": None}
    assert datetime.fromisoformat(first["created"]) == T0 + timedelta(minutes=2)


async def test_list_same_creation_time_orders_by_id(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    ids = [await add_job(app, alice, program, created_at=T0) for _ in range(4)]
    response = await client.get(JOBS, headers=alice.headers, params={"limit": 2})
    second = await client.get(JOBS, headers=alice.headers, params={"limit": 2, "offset": 2})
    listed = [item["id"] for item in response.json()["results"] + second.json()["results"]]
    assert listed == sorted((str(i) for i in ids), reverse=True)


async def test_list_needs_a_valid_token(client: AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = await client.get(JOBS, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "message" in response.json()


async def test_list_shows_only_own_jobs(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    await add_job(app, alice, await add_program(app, alice, "hello"))
    bob_job = await add_job(app, bob, await add_program(app, bob, "hello"))
    body = (await client.get(JOBS, headers=bob.headers)).json()
    assert body["count"] == 1
    assert [item["id"] for item in body["results"]] == [str(bob_job)]


async def test_interleaved_lists_of_two_users_never_mix(
    app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser
) -> None:
    """The page statement is compiled once per filter shape and run on whichever pooled connection is free: many
    lists of two users at once must still each show their own jobs only."""
    alice_program, bob_program = await add_program(app, alice, "mine"), await add_program(app, bob, "mine")
    alice_jobs = {str(await add_job(app, alice, alice_program)) for _ in range(2)}
    bob_jobs = {str(await add_job(app, bob, bob_program)) for _ in range(3)}
    users = [alice, bob] * 12
    lists = (client.get(JOBS, headers=user.headers, params={"function": "mine"}) for user in users)
    pages = await asyncio.gather(*lists)
    for user, page in zip(users, pages, strict=True):
        expected = alice_jobs if user is alice else bob_jobs
        assert page.status_code == 200, page.text
        assert page.json()["count"] == len(expected)
        assert {item["id"] for item in page.json()["results"]} == expected


async def test_list_without_trailing_slash(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await add_job(app, alice, await add_program(app, alice, "hello"))
    response = await client.get("/api/v1/jobs", headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["count"] == 1


async def test_pagination_links_are_absolute_and_keep_filters(
    app: FastAPI, client: AsyncClient, alice: TestUser
) -> None:
    program = await add_program(app, alice, "hello")
    ids = [await add_job(app, alice, program, created_at=T0 + timedelta(seconds=i)) for i in range(23)]
    await add_job(app, alice, program, status="FAILED")
    url: str | None = f"http://testserver{JOBS}?status=QUEUED&limit=10"
    pages: list[dict[str, Any]] = []
    while url is not None:
        response = await client.get(url, headers=alice.headers)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url = pages[-1]["next"]
    assert [len(page["results"]) for page in pages] == [10, 10, 3]
    assert all(page["count"] == 23 for page in pages)
    listed = [item["id"] for page in pages for item in page["results"]]
    assert listed == [str(i) for i in reversed(ids)]
    second_next = urlsplit(pages[1]["next"])
    assert (second_next.scheme, second_next.netloc, second_next.path) == ("http", "testserver", JOBS)
    assert parse_qs(second_next.query) == {"status": ["QUEUED"], "limit": ["10"], "offset": ["20"]}
    assert pages[0]["previous"] is None
    assert parse_qs(urlsplit(pages[1]["previous"]).query) == {"status": ["QUEUED"], "limit": ["10"], "offset": ["0"]}
    assert parse_qs(urlsplit(pages[2]["previous"]).query)["offset"] == ["10"]


async def test_offset_past_the_end(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    for _ in range(3):
        await add_job(app, alice, program)
    body = (await client.get(JOBS, headers=alice.headers, params={"offset": 50, "limit": 10})).json()
    assert body["count"] == 3
    assert body["results"] == []
    assert body["next"] is None
    assert parse_qs(urlsplit(body["previous"]).query)["offset"] == ["0"]


async def test_list_filters(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    await make_provider(app, "acme", bob)
    hello = await add_program(app, alice, "hello")
    other = await add_program(app, alice, "other")
    solver = await add_program(app, bob, "solver", provider="acme")
    old = await add_job(app, alice, hello, status="SUCCEEDED", created_at=T0)
    new = await add_job(app, alice, other, status="RUNNING", created_at=T0 + timedelta(days=2))
    catalog = await add_job(app, alice, solver, status="FAILED", created_at=T0 + timedelta(days=1))

    async def ids(**params: Any) -> set[str]:
        response = await client.get(JOBS, headers=alice.headers, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["results"])
        return {item["id"] for item in body["results"]}

    assert await ids(function="hello") == {str(old)}
    assert await ids(function="solver") == {str(catalog)}
    assert await ids(function="solver", provider="acme") == {str(catalog)}
    assert await ids(function="acme/solver") == set()  # titles are matched as given
    assert await ids(function="nothing") == set()
    assert await ids(provider="acme") == {str(catalog)}
    assert await ids(provider="nobody") == set()
    assert await ids(status="RUNNING") == {str(new)}
    assert await ids(status="STOPPED") == set()
    assert await ids(filter="catalog") == {str(catalog)}
    assert await ids(filter="serverless") == {str(old), str(new)}
    assert await ids(created_after="2025-01-01T12:00:00Z") == {str(new), str(catalog)}
    assert await ids(created_after="2025-01-02T12:00:00+00:00") == {str(new)}
    assert await ids(created_after="2025-01-02T13:00:00+01:00") == {str(new)}
    assert await ids(created_after="2025-01-02 12:00:00") == {str(new)}  # naive: UTC
    assert await ids(created_after="2025-01-01") == {str(new), str(catalog)}
    assert await ids(created_after="") == {str(old), str(new), str(catalog)}
    # A `+` sent unencoded arrives as a space.
    plus_as_space = await client.get(f"{JOBS}?created_after=2025-01-02T12:00:00+00:00", headers=alice.headers)
    assert {item["id"] for item in plus_as_space.json()["results"]} == {str(new)}
    assert await ids(filter="catalog", status="FAILED", provider="acme", function="solver") == {str(catalog)}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "BOGUS"},
        {"status": "succeeded"},
        {"filter": "all"},
        {"created_after": "yesterday"},
        {"created_after": "2025-13-01T00:00:00Z"},
        {"limit": 0},
        {"limit": -3},
        {"limit": "ten"},
        {"offset": -1},
        {"offset": 10**20},
        {"function": "x" * 300},
        {"function": "a\x00b"},
        {"provider": "a\x00b"},
        {"created_after": "9999-12-31T23:59:59-23:59"},
        {"created_after": "0001-01-01T00:00:00+01:00"},
    ],
)
async def test_list_bad_query_is_400(client: AsyncClient, alice: TestUser, params: dict[str, Any]) -> None:
    for path in (JOBS, f"{JOBS}provider/"):
        response = await client.get(path, headers=alice.headers, params=params)
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["message"]


async def test_limit_bounds(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    for _ in range(3):
        await add_job(app, alice, program)
    assert len((await client.get(JOBS, headers=alice.headers, params={"limit": 1})).json()["results"]) == 1
    assert len((await client.get(JOBS, headers=alice.headers, params={"limit": 50})).json()["results"]) == 3


@pytest.mark.parametrize("path", [JOBS, f"{JOBS}provider/"])
async def test_a_limit_above_the_maximum_is_clamped(
    app: FastAPI, client: AsyncClient, alice: TestUser, path: str
) -> None:
    program = await add_program(app, alice, "hello")
    for _ in range(3):
        await add_job(app, alice, program)
    for limit in (51, 10**6, 10**20):
        page = await client.get(path, headers=alice.headers, params={"limit": limit, "offset": 1})
        assert page.status_code == 200, page.text
        if path == JOBS:
            assert len(page.json()["results"]) == 2
            assert parse_qs(urlsplit(page.json()["previous"]).query)["limit"] == ["50"]  # the limit really used


async def test_job_token_cannot_list(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    _, headers = await add_job_with_token(app, alice, await add_program(app, alice, "hello"))
    assert (await client.get(JOBS, headers=headers)).status_code == 403
    assert (await client.get(f"{JOBS}provider/", headers=headers)).status_code == 403


async def test_provider_jobs(
    app: FastAPI, client: AsyncClient, make_user: Callable[..., Any], alice: TestUser, bob: TestUser
) -> None:
    carol = await make_user("carol")
    await make_provider(app, "acme", carol)
    await make_provider(app, "other", bob)
    solver = await add_program(app, carol, "solver", provider="acme")
    foreign = await add_program(app, bob, "foreign", provider="other")
    alice_job = await add_job(app, alice, solver, status="RUNNING", created_at=T0)
    bob_job = await add_job(app, bob, solver, status="SUCCEEDED", created_at=T0 + timedelta(hours=1))
    await add_job(app, alice, foreign)
    await add_job(app, alice, await add_program(app, alice, "own"))

    async def listed(user: TestUser, **params: Any) -> Any:
        return await client.get(f"{JOBS}provider/", headers=user.headers, params=params)

    body = (await listed(carol)).json()
    assert body["count"] == 2
    assert [item["id"] for item in body["results"]] == [str(bob_job), str(alice_job)]
    assert body["results"][0]["program"] == {"id": str(solver), "title": "solver", "provider": "acme"}
    assert [item["id"] for item in (await listed(carol, provider="acme")).json()["results"]] == [
        str(bob_job),
        str(alice_job),
    ]
    assert [item["id"] for item in (await listed(carol, status="RUNNING")).json()["results"]] == [str(alice_job)]
    assert (await listed(carol, function="solver", limit=1)).json()["next"] is not None
    # Bob administers only "other": he sees its job, not acme's, and naming acme answers 404.
    assert (await listed(bob)).json()["count"] == 1
    assert (await listed(bob, provider="acme")).status_code == 404
    assert (await listed(carol, provider="nobody")).status_code == 404
    # Alice administers nothing: an empty page.
    empty = (await listed(alice)).json()
    assert empty == {"count": 0, "next": None, "previous": None, "results": []}
    assert (await client.get("/api/v1/jobs/provider", headers=carol.headers)).json()["count"] == 2


# ---------------------------------------------------------------- one job


async def test_get_job(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    started = T0 + timedelta(seconds=5)
    job_id = await add_job(
        app,
        alice,
        program,
        status="SUCCEEDED",
        result='{"counts": {"00": 512, "11": 512}}',
        message="done",
        started_at=started,
        finished_at=started + timedelta(seconds=3),
    )
    response = await client.get(job_url(job_id), headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == str(job_id)
    assert body["status"] == "SUCCEEDED"
    assert body["sub_status"] is None
    assert body["result"] == {"counts": {"00": 512, "11": 512}}
    assert body["program"] == {"id": str(program), "title": "hello", "provider": None}
    assert body["message"] == "done"
    assert datetime.fromisoformat(body["started"]) == started
    assert datetime.fromisoformat(body["finished"]) == started + timedelta(seconds=3)
    assert {"created", "updated"} <= set(body)

    without = (await client.get(job_url(job_id), headers=alice.headers, params={"with_result": "false"})).json()
    assert without["result"] is None
    assert without["status"] == "SUCCEEDED"
    assert (await client.get(f"{JOBS}{job_id}", headers=alice.headers)).status_code == 200

    assert (await client.get(job_url(job_id), headers=bob.headers)).status_code == 404
    assert (await client.get(job_url(uuid.uuid4()), headers=alice.headers)).status_code == 404
    assert (await client.get(job_url("not-a-uuid"), headers=alice.headers)).status_code == 404
    assert (await client.get(job_url(job_id))).status_code == 401
    assert (
        await client.get(job_url(job_id), headers=alice.headers, params={"with_result": "maybe"})
    ).status_code == 400


async def test_get_job_result_values(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    for stored, shown in [(None, None), ("[1, 2]", [1, 2]), ('"text"', "text"), ('{"x": NaN}', {"x": None})]:
        job_id = await add_job(app, alice, program, status="SUCCEEDED", result=stored)
        body = (await client.get(job_url(job_id), headers=alice.headers)).json()
        assert body["result"] == shown, stored


async def test_result_endpoint(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    none = await add_job(app, alice, program, status="RUNNING")
    response = await client.get(job_url(none, "result/"), headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""
    done = await add_job(app, alice, program, status="SUCCEEDED", result='{"a": 1}')
    response = await client.get(job_url(done, "result/"), headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == {"result": '{"a": 1}'}
    assert (await client.get(f"{JOBS}{done}/result", headers=alice.headers)).status_code == 200
    assert (await client.get(job_url(done, "result/"), headers=bob.headers)).status_code == 404
    assert (await client.get(job_url("xyz", "result/"), headers=alice.headers)).status_code == 404


async def test_legacy_result_post(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id, job_headers = await add_job_with_token(app, alice, program)
    url = job_url(job_id, "result/")

    response = await client.post(url, headers=job_headers, data={"result": json.dumps({"value": 42})})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"value": 42}
    assert (await client.get(url, headers=alice.headers)).json() == {"result": '{"value": 42}'}

    response = await client.post(url, headers=job_headers, files={"result": (None, '{"multipart": true}')})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"multipart": True}

    response = await client.post(url, headers=job_headers, json={"result": '{"as": "string"}'})
    assert response.json()["result"] == {"as": "string"}
    response = await client.post(url, headers=job_headers, json={"result": {"as": ["object"]}})
    assert response.json()["result"] == {"as": ["object"]}
    assert (await job_columns(app, job_id)).result == '{"as": ["object"]}'

    bad_requests: list[dict[str, Any]] = [
        {"data": {"result": "{not json"}},
        {"json": {"result": "nope"}},
        {"json": {}},
        {"json": [1]},
        {"content": b"][", "headers": {"content-type": "application/json"}},
    ]
    for bad in bad_requests:
        extra = bad.pop("headers", {})
        response = await client.post(url, headers={**job_headers, **extra}, **bad)
        assert response.status_code == 400, (bad, response.text)
    assert (await client.post(url, headers=bob.headers, json={"result": "{}"})).status_code == 404
    assert (await client.post(url, json={"result": "{}"})).status_code == 401


async def test_result_post_refused_once_finished(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id = await add_job(app, alice, program, status="FAILED", result='{"kept": true}')
    response = await client.post(job_url(job_id, "result/"), headers=alice.headers, data={"result": "{}"})
    assert response.status_code == 409
    assert "FAILED" in response.json()["message"]
    assert (await job_columns(app, job_id)).result == '{"kept": true}'


async def test_result_post_size_limit(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_result_bytes=1000)
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status="RUNNING")
    big = json.dumps({"x": "y" * 200_000})
    response = await client.post(job_url(job_id, "result/"), headers=alice.headers, data={"result": big})
    assert response.status_code == 413
    assert (await job_columns(app, job_id)).result is None


async def test_job_token_reaches_only_its_own_job(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id, headers = await add_job_with_token(app, alice, program)
    other = await add_job(app, alice, program)
    assert (await client.get(job_url(job_id), headers=headers)).json()["id"] == str(job_id)
    for tail in ("", "result/", "logs/", "events/", "runtime_jobs/"):
        assert (await client.get(job_url(other, tail), headers=headers)).status_code == 404, tail
    assert (await client.post(job_url(other, "stop/"), headers=headers)).status_code == 404
    assert (
        await client.patch(job_url(other, "sub_status/"), headers=headers, data={"sub_status": "MAPPING"})
    ).status_code == 404
    # Its token dies with the job.
    finished_id, finished_headers = await add_job_with_token(app, alice, program, status="SUCCEEDED")
    assert (await client.get(job_url(finished_id), headers=finished_headers)).status_code == 401


# ---------------------------------------------------------------- logs


async def test_logs(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    storage = app.state.gateway.storage
    program = await add_program(app, alice, "hello")
    queued = await add_job(app, alice, program)
    assert (await client.get(job_url(queued, "logs/"), headers=alice.headers)).json() == {"logs": ""}
    await storage.put_bytes("logs/test-own.log", b"[PUBLIC] hello\nplain line\n")
    done = await add_job(app, alice, program, status="SUCCEEDED", logs_key="logs/test-own.log")
    # A user's own program: the whole logs, as they are.
    assert (await client.get(job_url(done, "logs/"), headers=alice.headers)).json() == {
        "logs": "[PUBLIC] hello\nplain line\n"
    }
    assert (await client.get(f"{JOBS}{done}/logs", headers=alice.headers)).status_code == 200
    assert (await client.get(job_url(done, "logs/"), headers=bob.headers)).status_code == 404
    # Provider logs exist only for provider functions.
    assert (await client.get(job_url(done, "provider-logs/"), headers=alice.headers)).status_code == 403


async def test_provider_logs(
    app: FastAPI, client: AsyncClient, make_user: Callable[..., Any], alice: TestUser, bob: TestUser
) -> None:
    carol = await make_user("carol")
    await make_provider(app, "acme", carol)
    solver = await add_program(app, carol, "solver", provider="acme")
    await app.state.gateway.storage.put_bytes("logs/test-provider.log", b"[PUBLIC] for all\n[PRIVATE] secret\nplain\n")
    job_id = await add_job(app, alice, solver, status="SUCCEEDED", logs_key="logs/test-provider.log")

    user_logs = (await client.get(job_url(job_id, "logs/"), headers=alice.headers)).json()["logs"]
    assert user_logs == "for all\nplain\n"
    response = await client.get(job_url(job_id, "provider-logs/"), headers=alice.headers)
    assert response.status_code == 403
    assert "admins" in response.json()["message"]
    provider_logs = await client.get(job_url(job_id, "provider-logs/"), headers=carol.headers)
    assert provider_logs.status_code == 200
    assert provider_logs.json() == {"logs": "[PUBLIC] for all\n[PRIVATE] secret\nplain\n"}
    assert (await client.get(f"{JOBS}{job_id}/provider-logs", headers=carol.headers)).status_code == 200
    assert (await client.get(job_url(job_id, "provider-logs/"), headers=bob.headers)).status_code == 404
    # The admin reads provider logs, not the user's job itself.
    assert (await client.get(job_url(job_id), headers=carol.headers)).status_code == 404
    assert (await client.get(job_url(uuid.uuid4(), "provider-logs/"), headers=carol.headers)).status_code == 404


# ---------------------------------------------------------------- stop


async def test_stop_queued_job(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id = await add_job(app, alice, program)
    assert (await client.post(job_url(job_id, "stop/"), headers=bob.headers, json={"service": None})).status_code == 404
    response = await client.post(job_url(job_id, "stop/"), headers=alice.headers, json={"service": None})
    assert response.status_code == 200, response.text
    assert "stopped" in response.json()["message"].lower()
    job = await job_columns(app, job_id)
    assert job.status == "STOPPED"
    assert job.finished_at is not None
    assert job.started_at is None
    body = (await client.get(job_url(job_id), headers=alice.headers)).json()
    assert body["status"] == "STOPPED"
    assert [(e.event_type, e.context) for e in await events_of(app, job_id)] == [("STATUS_CHANGE", "STOP")]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"json": {"service": None}},
        {"json": {"service": '"local"'}},
        {"json": {"service": "true"}},
        {"json": {"service": {"channel": "local"}}},
        {"json": [1, 2]},
        {"content": b"not json", "headers": {"content-type": "application/json"}},
        {"data": {"service": "x"}},
    ],
)
async def test_stop_accepts_any_body(app: FastAPI, client: AsyncClient, alice: TestUser, body: dict[str, Any]) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"))
    headers = {**alice.headers, **body.pop("headers", {})}
    response = await client.post(f"{JOBS}{job_id}/stop", headers=headers, **body)
    assert response.status_code == 200, response.text
    assert (await job_columns(app, job_id)).status == "STOPPED"


@pytest.mark.parametrize("status", ["PENDING", "RUNNING"])
async def test_stop_submitted_job_asks_the_engine(
    app: FastAPI, client: AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    woken: list[int] = []
    monkeypatch.setattr(app.state.gateway, "wake_dispatcher", lambda: woken.append(1))
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status=status)
    response = await client.post(job_url(job_id, "stop/"), headers=alice.headers, json={"service": None})
    assert response.status_code == 200
    assert "requested" in response.json()["message"]
    job = await job_columns(app, job_id)
    assert job.status == status
    assert job.stop_requested is True
    assert woken == [1]
    again = await client.post(job_url(job_id, "stop/"), headers=alice.headers)
    assert again.status_code == 200
    assert len(await events_of(app, job_id)) == 1


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED", "STOPPED"])
async def test_stop_finished_job_changes_nothing(
    app: FastAPI, client: AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    woken: list[int] = []
    monkeypatch.setattr(app.state.gateway, "wake_dispatcher", lambda: woken.append(1))
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status=status)
    before = await job_columns(app, job_id)
    response = await client.post(job_url(job_id, "stop/"), headers=alice.headers, json={"service": None})
    assert response.status_code == 200
    assert response.json()["message"].startswith(f"Job has already finished ({status})")
    after = await job_columns(app, job_id)
    assert (after.status, after.stop_requested, after.updated_at) == (status, False, before.updated_at)
    assert woken == []


async def test_run_then_stop_through_the_api(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await upload_program(client, alice, "real")
    job_id = (await client.post(RUN, headers=alice.headers, json={"title": "real"})).json()["id"]
    assert (await client.get(job_url(job_id), headers=alice.headers)).json()["status"] == "QUEUED"
    assert (await client.post(job_url(job_id, "stop/"), headers=alice.headers)).status_code == 200
    body = (await client.get(JOBS, headers=alice.headers, params={"function": "real"})).json()
    assert [(item["id"], item["status"]) for item in body["results"]] == [(job_id, "STOPPED")]


# ---------------------------------------------------------------- sub-status, events, runtime jobs


async def test_sub_status(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id, headers = await add_job_with_token(app, alice, program)
    url = job_url(job_id, "sub_status/")
    response = await client.patch(url, headers=headers, data={"sub_status": "MAPPING"})
    assert response.status_code == 200, response.text
    assert response.json()["sub_status"] == "MAPPING"
    response = await client.patch(
        f"{JOBS}{job_id}/sub_status", headers=alice.headers, json={"sub_status": "WAITING_QPU"}
    )
    assert response.json()["sub_status"] == "WAITING_QPU"
    listed = (await client.get(JOBS, headers=alice.headers)).json()["results"][0]
    assert (listed["status"], listed["sub_status"]) == ("RUNNING", "WAITING_QPU")
    bad_patches: list[dict[str, Any]] = [
        {"data": {"sub_status": "DANCING"}},
        {"data": {}},
        {"json": {"sub_status": 3}},
        {"content": b"{", "headers": {"content-type": "application/json"}},
    ]
    for bad in bad_patches:
        extra = bad.pop("headers", {})
        response = await client.patch(url, headers={**alice.headers, **extra}, **bad)
        assert response.status_code == 400, (bad, response.text)
    assert (await client.patch(url, headers=bob.headers, data={"sub_status": "MAPPING"})).status_code == 404
    contexts = [(e.context, e.data.get("sub_status")) for e in await events_of(app, job_id)]
    assert sorted(contexts) == [("SET_SUB_STATUS", "MAPPING"), ("SET_SUB_STATUS", "WAITING_QPU")]


async def test_sub_status_refused_once_finished(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status="SUCCEEDED")
    response = await client.patch(job_url(job_id, "sub_status/"), headers=alice.headers, data={"sub_status": "MAPPING"})
    assert response.status_code == 409
    assert (await job_columns(app, job_id)).sub_status is None


async def test_events(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id, headers = await add_job_with_token(app, alice, program)
    error = {"type": "ERROR", "code": 42, "message": "it broke", "exception": "ValueError", "args": {"k": [1]}}
    response = await client.post(job_url(job_id, "event/"), headers=headers, json=error)
    assert response.status_code == 200, response.text
    await client.patch(job_url(job_id, "sub_status/"), headers=headers, data={"sub_status": "MAPPING"})
    response = await client.post(
        f"{JOBS}{job_id}/event",
        headers=headers,
        json={"type": "ERROR", "code": "E2", "message": "nul\x00", "exception": "X"},
    )
    assert response.status_code == 200, response.text

    errors = (await client.get(job_url(job_id, "events/"), headers=alice.headers, params={"type": "ERROR"})).json()
    assert [set(event) for event in errors] == [{"event_type", "origin", "context", "created", "data"}] * 2
    assert errors[0]["event_type"] == "ERROR"
    assert errors[0]["context"] == "SEND_ERROR"
    assert errors[0]["data"] == {"code": 42, "message": "it broke", "exception": "ValueError", "args": {"k": [1]}}
    assert errors[1]["data"]["args"] is None
    assert errors[1]["data"]["message"] == "nul\ufffd"
    everything = (await client.get(f"{JOBS}{job_id}/events", headers=alice.headers)).json()
    assert [event["event_type"] for event in everything] == ["ERROR", "STATUS_CHANGE", "ERROR"]
    assert (await client.get(job_url(job_id, "events/"), headers=headers, params={"type": "error"})).json() == errors
    assert (
        await client.get(job_url(job_id, "events/"), headers=alice.headers, params={"type": "a\x00"})
    ).status_code == 400
    assert (await client.get(job_url(job_id, "events/"), headers=bob.headers)).status_code == 404
    assert (await client.post(job_url(job_id, "event/"), headers=bob.headers, json=error)).status_code == 404
    for bad in ([1], {"type": "no spaces allowed"}, {"type": ""}):
        assert (await client.post(job_url(job_id, "event/"), headers=headers, json=bad)).status_code == 400
    huge = {"type": "ERROR", "message": "m" * 300_000, "code": 1, "exception": "E"}
    assert (await client.post(job_url(job_id, "event/"), headers=headers, json=huge)).status_code == 413


async def test_runtime_jobs(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    program = await add_program(app, alice, "hello")
    job_id, headers = await add_job_with_token(app, alice, program)
    url = job_url(job_id, "runtime_jobs/")
    assert (await client.get(url, headers=alice.headers)).json() == {"runtime_jobs": []}
    for item in ({"runtime_job": "rt-1", "runtime_session": "s-1"}, {"runtime_job": "rt-2", "runtime_session": None}):
        response = await client.post(url, headers=headers, json=item)
        assert response.status_code == 200, response.text
        assert response.json() == item
    assert (
        await client.post(url, headers=headers, json={"runtime_job": "rt-1", "runtime_session": "s-1"})
    ).status_code == 200
    assert (
        await client.post(f"{JOBS}{job_id}/runtime_jobs", headers=headers, json={"runtime_job": "rt-3"})
    ).status_code == 200
    listed = (await client.get(f"{JOBS}{job_id}/runtime_jobs", headers=alice.headers)).json()
    assert listed == {
        "runtime_jobs": [
            {"runtime_job": "rt-1", "runtime_session": "s-1"},
            {"runtime_job": "rt-2", "runtime_session": None},
            {"runtime_job": "rt-3", "runtime_session": None},
        ]
    }
    for bad in ({}, {"runtime_job": ""}, {"runtime_job": 5}, {"runtime_job": "a\x00b"}, {"runtime_job": "x" * 300}):
        assert (await client.post(url, headers=headers, json=bad)).status_code == 400, bad
    assert (await client.get(url, headers=bob.headers)).status_code == 404
    assert (await client.post(url, headers=bob.headers, json={"runtime_job": "rt-9"})).status_code == 404


async def test_text_postgresql_refuses_never_reaches_it(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status="RUNNING")
    headers = {**alice.headers, "content-type": "application/json"}
    lone = b'{"type": "ERROR", "message": "\\ud800x", "code": 1, "exception": {"\\ud800": "\\u0000"}, "args": 1e999}'
    response = await client.post(job_url(job_id, "event/"), headers=headers, content=lone)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {
        "code": 1,
        "message": "\ufffdx",
        "exception": {"\ufffd": "\ufffd"},
        "args": None,
    }
    for path, body in [
        ("runtime_jobs/", b'{"runtime_job": "\\ud800"}'),
        ("result/", b'{"result": "\\"\\ud800\\""}'),
        ("result/", b'{"result": "\\"\\\\ud800\\""}'),
        ("result/", b'{"result": {"a": "\\ud800"}}'),
    ]:
        response = await client.post(job_url(job_id, path), headers=headers, content=body)
        assert response.status_code == 400, (path, body, response.text)
    # An escaped surrogate pair is one valid character.
    response = await client.post(
        job_url(job_id, "result/"), headers=headers, content=b'{"result": "\\"\\\\ud83d\\\\ude00\\""}'
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "\U0001f600"


async def test_deeply_nested_json_is_refused(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "hello"), status="RUNNING")
    headers = {**alice.headers, "content-type": "application/json"}
    for depth, expected in ((99, 200), (150, 400), (100_000, 400)):
        nested = b"[" * depth + b"]" * depth
        for path, body in [
            ("event/", b'{"type": "ERROR", "args": ' + nested + b"}"),
            ("result/", b'{"result": ' + nested + b"}"),
            ("result/", b'{"result": "' + nested + b'"}'),
        ]:
            response = await client.post(job_url(job_id, path), headers=headers, content=body)
            assert response.status_code == expected, (depth, path, response.text[:200])
    assert (await client.get(job_url(job_id), headers=alice.headers)).status_code == 200
    assert (await client.get(job_url(job_id, "events/"), headers=alice.headers)).status_code == 200
