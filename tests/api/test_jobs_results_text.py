"""Results are kept and served as the JSON text they are: spliced into answers, never decoded on a read."""

from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.auth import Principal
from serverless_gateway.services import jobs as job_service
from serverless_gateway.services.results import RESULT_INLINE_MAX_BYTES
from tests.api.jobs_support import add_job, add_job_with_token, add_program, job_columns
from tests.api.test_jobs_results_storage import removed
from tests.conftest import TestUser

JOBS = "/api/v1/jobs/"
ODD = '{"b": 1,  "a": [1.0, 2e3, "\\u00e9"], "nested": {"k": null}}'


async def raw_get(client: AsyncClient, url: str, user: TestUser, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The answer's bytes, got while any json.loads fails the test (the test decodes it afterwards)."""
    with monkeypatch.context() as patch:
        patch.setattr(json, "loads", lambda *a, **k: pytest.fail("a result was decoded on a read"))
        response = await client.get(url, headers=user.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.content


async def test_the_stored_text_is_spliced_in(
    app: FastAPI, client: AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await add_job(app, alice, await add_program(app, alice, "odd"), status="SUCCEEDED", result=ODD)
    body = await raw_get(client, f"{JOBS}{job_id}/", alice, monkeypatch)
    assert b'"result":' + ODD.encode() + b"}" in body  # 2e3 stays 2e3, the spacing stays
    parsed = json.loads(body)
    assert parsed["result"] == json.loads(ODD)
    assert parsed["id"] == str(job_id)
    assert parsed["status"] == "SUCCEEDED"

    body = await raw_get(client, f"{JOBS}{job_id}/result/", alice, monkeypatch)
    assert json.loads(body) == {"result": ODD}
    assert body == json.dumps({"result": ODD}, ensure_ascii=False, separators=(",", ":")).encode()


async def test_a_stored_object_is_streamed(
    app: FastAPI, client: AsyncClient, alice: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = await add_program(app, alice, "big")
    job_id, job_headers = await add_job_with_token(app, alice, program)
    text = json.dumps({"rows": ["é漢😀\\\"" * 50] * (3 * RESULT_INLINE_MAX_BYTES // 400)}, ensure_ascii=False)
    saved = await client.post(f"{JOBS}{job_id}/result/", headers=job_headers, json={"result": text})
    assert saved.status_code == 200, saved.text
    assert saved.json()["result"] == json.loads(text)
    assert (await job_columns(app, job_id)).result_key is not None

    body = await raw_get(client, f"{JOBS}{job_id}/", alice, monkeypatch)
    assert body.endswith(b'"result":' + text.encode() + b"}")
    body = await raw_get(client, f"{JOBS}{job_id}/result/", alice, monkeypatch)
    assert json.loads(body) == {"result": text}


async def test_nan_is_stored_as_null(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id, job_headers = await add_job_with_token(app, alice, await add_program(app, alice, "nan"))
    url = f"{JOBS}{job_id}/result/"
    sent = '{"x": NaN, "label": "NaN stays text", "y": [-Infinity]}'
    saved = await client.post(url, headers=job_headers, data={"result": sent})
    assert saved.status_code == 200, saved.text
    assert saved.json()["result"] == {"x": None, "label": "NaN stays text", "y": [None]}
    stored = '{"x": null, "label": "NaN stays text", "y": [null]}'
    assert (await job_columns(app, job_id)).result == stored
    assert (await client.get(url, headers=alice.headers)).json() == {"result": stored}


async def test_hostile_results_are_refused_quickly(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    job_id, job_headers = await add_job_with_token(app, alice, await add_program(app, alice, "hostile"))
    url = f"{JOBS}{job_id}/result/"
    for text, fragment in [
        ("[" * 400_000 + "]" * 400_000, "nested more than 100 levels deep"),
        ('{"a":' * 200_000 + "1" + "}" * 200_000, "nested more than 100 levels deep"),
        ('["' + "x" * 500_000 + '"', "not valid JSON"),
    ]:
        started = time.perf_counter()
        response = await client.post(url, headers=job_headers, json={"result": text})
        assert response.status_code == 400, response.text[:300]
        assert fragment in response.json()["message"]
        assert time.perf_counter() - started < 5
    assert (await job_columns(app, job_id)).result is None


async def test_a_replaced_object_is_kept_until_the_commit(app: FastAPI, alice: TestUser) -> None:
    """Item 12: a save that rolls back leaves the committed row pointing at an object that still exists."""
    state = app.state.gateway
    program = await add_program(app, alice, "replace")
    job_id = await add_job(app, alice, program, status="RUNNING")
    principal = Principal(user_id=alice.id, username=alice.name)
    big = json.dumps(["x" * 1000] * (RESULT_INLINE_MAX_BYTES // 900))
    async with state.sessionmaker.begin() as session:
        await job_service.save_result(
            session, state.storage, principal=principal, job_id=job_id, result=big, max_bytes=10**8
        )
    first = (await job_columns(app, job_id)).result_key
    assert first is not None

    async with state.sessionmaker() as session:
        await job_service.save_result(
            session, state.storage, principal=principal, job_id=job_id, result=big + " ", max_bytes=10**8
        )
        await session.rollback()
    assert (await job_columns(app, job_id)).result_key == first
    assert await state.storage.get_bytes(first) == big.encode()

    async with state.sessionmaker() as session:
        await job_service.save_result(
            session, state.storage, principal=principal, job_id=job_id, result="[1]", max_bytes=10**8
        )
        assert await state.storage.exists(first), "removed before the commit"
        await session.commit()
        for callback in session.info.pop("after_commit", []):
            callback()
    await removed(state.storage, first)
    assert (await job_columns(app, job_id)).result == "[1]"
