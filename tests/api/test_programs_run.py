"""Programs API: run (queueing a job, limits, disabled programs, config bounds) and validate_arguments."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import conftest
from tests.api.programs_support import RUN, VALIDATE, grant, make_provider, tune_settings
from tests.conftest import upload_program

__all__ = ["tune_settings"]

SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"shots": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
        "required": ["shots"],
    }
)


async def job_row(db_engine: AsyncEngine, job_id: str) -> Any:
    async with db_engine.connect() as conn:
        result = await conn.execute(
            text("SELECT status, author_id, program_id, arguments, config FROM job WHERE id = :id"),
            {"id": uuid.UUID(job_id)},
        )
        return result.one()


async def test_run_queues_a_job(
    app: FastAPI, client: AsyncClient, db_engine: AsyncEngine, alice: conftest.TestUser, monkeypatch: Any
) -> None:
    program = await upload_program(client, alice, "hello")
    woken: list[int] = []
    monkeypatch.setattr(app.state.gateway, "wake_dispatcher", lambda: woken.append(1))
    response = await client.post(
        RUN,
        headers=alice.headers,
        json={"title": "hello", "arguments": {"n": 3, "names": ["a"]}, "config": {"workers": 2, "auto_scaling": True}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "status"}
    assert body["status"] == "QUEUED"
    row = await job_row(db_engine, body["id"])
    assert row.status == "QUEUED"
    assert row.author_id == alice.id
    assert str(row.program_id) == program["id"]
    assert json.loads(row.arguments) == {"n": 3, "names": ["a"]}
    assert row.config == {"workers": 2, "auto_scaling": True}
    assert woken == [1]  # the engine is woken once the job is committed


async def test_run_as_the_official_client_sends_it(
    client: AsyncClient, db_engine: AsyncEngine, alice: conftest.TestUser
) -> None:
    await upload_program(client, alice, "hello")
    arguments = json.dumps({"circuit": {"__type__": "QuantumCircuit", "__value__": "abc"}})
    response = await client.post(
        "/api/v1/programs/run",
        headers=alice.headers,
        json={
            "title": "hello",
            "provider": None,
            "function_size": None,
            "arguments": arguments,
            "config": {"workers": None, "min_workers": None, "max_workers": None, "auto_scaling": False},
        },
    )
    assert response.status_code == 200, response.text
    row = await job_row(db_engine, response.json()["id"])
    assert row.arguments == arguments  # kept exactly as the client encoded it
    assert row.config == {"auto_scaling": False}


async def test_run_notifies_other_replicas(client: AsyncClient, database_url: str, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "hello")
    received: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.add_listener("gateway_jobs", lambda *args: received.put_nowait(args[3]))
        response = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
        assert response.status_code == 200
        payload = await asyncio.wait_for(received.get(), timeout=5)
        assert payload == response.json()["id"]
    finally:
        await conn.close()


async def test_run_without_arguments_stores_an_empty_object(
    client: AsyncClient, db_engine: AsyncEngine, alice: conftest.TestUser
) -> None:
    await upload_program(client, alice, "hello")
    response = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    assert response.status_code == 200
    row = await job_row(db_engine, response.json()["id"])
    assert row.arguments == "{}"
    assert row.config == {}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "title"),
        ({"title": 5}, "title"),
        ({"title": "hello", "arguments": "{not json"}, "arguments: not valid JSON"),
        ({"title": "hello", "arguments": "[1, 2]"}, "arguments: must be a JSON object"),
        ({"title": "hello", "arguments": 7}, "arguments"),
        ({"title": "hello", "config": {"workers": 0}}, "workers"),
        ({"title": "hello", "config": {"workers": 17}}, "config.workers: at most 16"),
        ({"title": "hello", "config": {"workers": "2"}}, "workers"),
        ({"title": "hello", "config": {"workers": 2.5}}, "workers"),
        ({"title": "hello", "config": {"auto_scaling": "yes"}}, "auto_scaling"),
        ({"title": "hello", "config": {"min_workers": 4, "max_workers": 2}}, "must not exceed config.max_workers"),
        ({"title": "hello", "config": "big"}, "config"),
        ({"title": "a/b/c"}, "at most one slash"),
        ({"title": "hello", "provider": "no such!"}, "not a valid provider name"),
    ],
)
async def test_run_bad_input(
    client: AsyncClient, alice: conftest.TestUser, body: dict[str, Any], fragment: str
) -> None:
    await upload_program(client, alice, "hello")
    response = await client.post(RUN, headers=alice.headers, json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]


async def test_run_with_malformed_json(client: AsyncClient, alice: conftest.TestUser) -> None:
    response = await client.post(
        RUN, headers={**alice.headers, "Content-Type": "application/json"}, content=b'{"title": '
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["message"]


async def test_run_with_arguments_postgres_cannot_store(client: AsyncClient, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "hello")
    # The arguments string holds a lone surrogate once decoded: valid JSON, but not UTF-8.
    body = b'{"title": "hello", "arguments": "{\\"a\\": \\"\\ud800\\"}"}'
    headers = {**alice.headers, "Content-Type": "application/json"}
    response = await client.post(RUN, headers=headers, content=body)
    assert response.status_code == 400, response.text
    assert "not valid UTF-8" in response.json()["message"]
    as_object = await client.post(RUN, headers=headers, content=b'{"title": "hello", "arguments": {"a": "\\ud800"}}')
    assert as_object.status_code == 200  # re-encoded with escapes, so it is stored fine


async def test_run_ignores_unknown_config_keys(client: AsyncClient, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "hello")
    response = await client.post(
        RUN, headers=alice.headers, json={"title": "hello", "config": {"workers": 1, "gpu": True}, "extra": 1}
    )
    assert response.status_code == 200, response.text


async def test_run_checks_arguments_against_the_schema(client: AsyncClient, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "typed", arguments_schema=SCHEMA)
    ok = await client.post(RUN, headers=alice.headers, json={"title": "typed", "arguments": {"shots": 10}})
    assert ok.status_code == 200, ok.text
    bad = await client.post(RUN, headers=alice.headers, json={"title": "typed", "arguments": {"shots": 0}})
    assert bad.status_code == 400
    assert "$.shots" in bad.json()["message"]


async def test_run_of_an_unknown_program(client: AsyncClient, alice: conftest.TestUser) -> None:
    response = await client.post(RUN, headers=alice.headers, json={"title": "ghost"})
    assert response.status_code == 404
    assert response.json() == {"message": "Program 'ghost' not found."}


async def test_run_of_someone_elses_program(
    client: AsyncClient, alice: conftest.TestUser, bob: conftest.TestUser
) -> None:
    await upload_program(client, alice, "private")
    response = await client.post(RUN, headers=bob.headers, json={"title": "private"})
    assert response.status_code == 404


async def test_run_of_a_provider_program_needs_a_run_grant(
    app: FastAPI, client: AsyncClient, alice: conftest.TestUser, bob: conftest.TestUser
) -> None:
    await make_provider(app, "acme", alice)
    await upload_program(client, alice, "solver", provider="acme")
    body = {"title": "solver", "provider": "acme"}
    assert (await client.post(RUN, headers=bob.headers, json=body)).status_code == 404
    await grant(app, title="solver", provider="acme", user=bob, level="view")
    view_only = await client.post(RUN, headers=bob.headers, json=body)
    assert view_only.status_code == 403
    await grant(app, title="solver", provider="acme", user=bob, level="run")
    runs = await client.post(RUN, headers=bob.headers, json={"title": "acme/solver"})
    assert runs.status_code == 200, runs.text
    admin = await client.post(RUN, headers=alice.headers, json=body)
    assert admin.status_code == 200, admin.text


async def test_run_of_a_disabled_program(client: AsyncClient, db_engine: AsyncEngine, alice: conftest.TestUser) -> None:
    program = await upload_program(client, alice, "old")
    async with db_engine.begin() as conn:
        await conn.execute(
            text("UPDATE program SET disabled = true, disabled_reason = 'retired, use new' WHERE id = :id"),
            {"id": uuid.UUID(str(program["id"]))},
        )
    response = await client.post(RUN, headers=alice.headers, json={"title": "old"})
    assert response.status_code == 423
    assert "retired, use new" in response.json()["message"]
    shown = (await client.get("/api/v1/programs/get_by_title/old/", headers=alice.headers)).json()
    assert shown["disabled"] is True
    assert shown["disabled_reason"] == "retired, use new"


async def test_active_job_limit(
    client: AsyncClient, db_engine: AsyncEngine, alice: conftest.TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_active_jobs_per_user=2)
    await upload_program(client, alice, "hello")
    first = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    second = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    assert (first.status_code, second.status_code) == (200, 200)
    third = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    assert third.status_code == 429
    assert "2 active jobs" in third.json()["message"]
    async with db_engine.begin() as conn:
        await conn.execute(text("UPDATE job SET status = 'SUCCEEDED' WHERE id = :id"), {"id": first.json()["id"]})
    again = await client.post(RUN, headers=alice.headers, json={"title": "hello"})
    assert again.status_code == 200


async def test_active_job_limit_holds_under_concurrency(
    client: AsyncClient,
    db_engine: AsyncEngine,
    alice: conftest.TestUser,
    bob: conftest.TestUser,
    tune_settings: Callable[..., None],
) -> None:
    tune_settings(max_active_jobs_per_user=3)
    await upload_program(client, alice, "hello")
    await upload_program(client, bob, "hello")
    responses = await asyncio.gather(
        *[client.post(RUN, headers=user.headers, json={"title": "hello"}) for user in [alice, bob] * 8]
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 6 + [429] * 10
    async with db_engine.connect() as conn:
        counts = dict((await conn.execute(text("SELECT author_id, count(*) FROM job GROUP BY author_id"))).all())
    assert counts == {alice.id: 3, bob.id: 3}


async def test_validate_arguments(client: AsyncClient, alice: conftest.TestUser) -> None:
    program = await upload_program(client, alice, "typed", arguments_schema=SCHEMA)
    good = await client.post(
        VALIDATE,
        headers=alice.headers,
        json={"title": "typed", "arguments": json.dumps({"shots": 5}), "provider": None},
    )
    assert good.status_code == 200, good.text
    assert good.json()["valid"] is True
    assert good.json()["id"] == program["id"]
    assert good.json()["title"] == "typed"
    as_object = await client.post(VALIDATE, headers=alice.headers, json={"title": "typed", "arguments": {"shots": 1}})
    assert as_object.status_code == 200
    missing = await client.post(VALIDATE, headers=alice.headers, json={"title": "typed", "arguments": {}})
    assert missing.status_code == 400
    assert "'shots' is a required property" in missing.json()["message"]
    wrong_type = await client.post(
        "/api/v1/programs/validate_arguments",
        headers=alice.headers,
        json={"title": "typed", "arguments": '{"shots": "x"}'},
    )
    assert wrong_type.status_code == 400
    assert "$.shots" in wrong_type.json()["message"]
    not_json = await client.post(VALIDATE, headers=alice.headers, json={"title": "typed", "arguments": "{"})
    assert not_json.status_code == 400


async def test_schema_that_cannot_be_applied(client: AsyncClient, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "remote", arguments_schema='{"$ref": "https://example.invalid/schema.json"}')
    response = await client.post(VALIDATE, headers=alice.headers, json={"title": "remote", "arguments": {}})
    assert response.status_code == 400
    assert "cannot be applied" in response.json()["message"]
    run = await client.post(RUN, headers=alice.headers, json={"title": "remote"})
    assert run.status_code == 400


async def test_validate_arguments_without_a_schema(client: AsyncClient, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "free")
    response = await client.post(VALIDATE, headers=alice.headers, json={"title": "free", "arguments": {"x": [1]}})
    assert response.status_code == 200
    assert response.json()["valid"] is True


async def test_validate_arguments_of_someone_elses_program(
    client: AsyncClient, alice: conftest.TestUser, bob: conftest.TestUser
) -> None:
    await upload_program(client, alice, "typed", arguments_schema=SCHEMA)
    response = await client.post(VALIDATE, headers=bob.headers, json={"title": "typed", "arguments": {"shots": 1}})
    assert response.status_code == 404


async def test_validate_arguments_with_a_boolean_schema(client: AsyncClient, alice: conftest.TestUser) -> None:
    await upload_program(client, alice, "closed", arguments_schema="false")
    shown = (await client.get("/api/v1/programs/get_by_title/closed", headers=alice.headers)).json()
    assert shown["arguments_schema"] is False
    response = await client.post(VALIDATE, headers=alice.headers, json={"title": "closed", "arguments": {}})
    assert response.status_code == 400


REDOS_SCHEMA = json.dumps({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}})


async def test_a_catastrophic_pattern_neither_hangs_nor_blocks_liveness(
    client: AsyncClient, alice: conftest.TestUser
) -> None:
    await upload_program(client, alice, "redos", arguments_schema=REDOS_SCHEMA)
    attack = {"title": "redos", "arguments": json.dumps({"s": "a" * 34 + "!"})}
    warm = await client.post(VALIDATE, headers=alice.headers, json={"title": "redos", "arguments": {"s": "aa"}})
    assert warm.status_code == 200  # first calls import and build things once; the attacks come after
    started = asyncio.get_running_loop().time()
    attacks = [asyncio.create_task(client.post(VALIDATE, headers=alice.headers, json=attack)) for _ in range(6)]
    liveness = []
    while not all(task.done() for task in attacks) or len(liveness) < 5:
        began = asyncio.get_running_loop().time()
        assert (await client.get("/api/v1/liveness/")).status_code == 200
        liveness.append(asyncio.get_running_loop().time() - began)
        await asyncio.sleep(0.01)  # let the attacks run between probes
    answers = await asyncio.gather(*attacks)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert [answer.status_code for answer in answers] == [400] * 6
    assert "does not match" in answers[0].json()["message"]
    # In-process the first probe also waits for the six requests' own loop work (parsing, queries) to start;
    # every later one runs beside validations in flight. (bench/hostile_bench.py measures a real server.)
    assert max(liveness[1:]) < 0.1, liveness
    assert liveness[0] < 1.0, liveness
    run = await client.post(RUN, headers=alice.headers, json=attack)
    assert run.status_code == 400


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"properties": {"s": {"pattern": "(a)\\1"}}}, "is not supported"),
        ({"patternProperties": {"(?=x)": {}}}, "is not supported"),
        ({"description": "x" * 300_000}, "at most 262144 bytes"),
        ({"properties": {f"p{i}": {"pattern": f"^{i}$"} for i in range(65)}}, "at most 64 regular expressions"),
    ],
)
async def test_schemas_the_gateway_cannot_run_safely_are_refused_at_upload(
    client: AsyncClient, alice: conftest.TestUser, schema: dict[str, Any], expected: str
) -> None:
    response = await client.post(
        "/api/v1/programs/upload/",
        headers=alice.headers,
        data={"title": "bad-schema", "entrypoint": "main.py", "arguments_schema": json.dumps(schema)},
        files={"artifact": ("a.tar", conftest.make_tar({"main.py": "print(1)\n"}), "application/x-tar")},
    )
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"]

