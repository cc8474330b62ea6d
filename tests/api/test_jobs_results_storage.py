"""Results larger than the inline limit live in storage (results/<job id>.json); the API answers the same."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.services.results import RESULT_INLINE_MAX_BYTES
from serverless_gateway.storage.base import Storage
from tests.api.jobs_support import add_job, add_job_with_token, add_program, job_columns

if TYPE_CHECKING:
    from tests.conftest import TestUser

JOBS = "/api/v1/jobs/"


async def removed(storage: Storage, key: str) -> None:
    """Wait for the removal that runs after the commit (a task of its own) to be done."""
    for _ in range(100):
        if not await storage.exists(key):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} was not removed")


async def test_large_result_goes_to_storage_and_reads_back(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    storage = app.state.gateway.storage
    program = await add_program(app, alice, "big-result")
    job_id, job_headers = await add_job_with_token(app, alice, program)
    value = {"rows": ["é漢😀 " * 8] * (RESULT_INLINE_MAX_BYTES // 40), "n": 1}
    text = json.dumps(value)
    assert len(text.encode()) > RESULT_INLINE_MAX_BYTES

    saved = await client.post(f"{JOBS}{job_id}/result/", headers=job_headers, json={"result": text})
    assert saved.status_code == 200, saved.text
    assert saved.json()["result"] == value
    row = await job_columns(app, job_id)
    assert row.result is None
    assert row.result_key is not None
    assert row.result_key.startswith(f"results/{job_id}/")
    first_key = row.result_key
    assert await storage.get_bytes(row.result_key) == text.encode()

    assert (await client.get(f"{JOBS}{job_id}/", headers=alice.headers)).json()["result"] == value
    assert (await client.get(f"{JOBS}{job_id}/result/", headers=alice.headers)).json() == {"result": text}
    without = await client.get(f"{JOBS}{job_id}/", params={"with_result": "false"}, headers=alice.headers)
    assert without.json()["result"] is None

    # A later small result moves back inline and the stored copy is removed.
    small = await client.post(f"{JOBS}{job_id}/result/", headers=job_headers, json={"result": '{"small": true}'})
    assert small.status_code == 200
    row = await job_columns(app, job_id)
    assert (row.result, row.result_key) == ('{"small": true}', None)
    await removed(storage, first_key)
    assert (await client.get(f"{JOBS}{job_id}/result/", headers=alice.headers)).json() == {"result": '{"small": true}'}


async def test_small_result_stays_inline(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "small-result")
    job_id, job_headers = await add_job_with_token(app, alice, program)
    text = json.dumps({"x": "y" * (RESULT_INLINE_MAX_BYTES - 100)})
    saved = await client.post(f"{JOBS}{job_id}/result/", headers=job_headers, json={"result": text})
    assert saved.status_code == 200
    row = await job_columns(app, job_id)
    assert (row.result, row.result_key) == (text, None)
    assert await app.state.gateway.storage.list(f"results/{job_id}/") == []


async def test_missing_stored_result_reads_as_none(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    program = await add_program(app, alice, "lost-result")
    job_id = await add_job(app, alice, program, status="SUCCEEDED", result_key="results/never-written.json")
    assert (await client.get(f"{JOBS}{job_id}/result/", headers=alice.headers)).status_code == 204
    assert (await client.get(f"{JOBS}{job_id}/", headers=alice.headers)).json()["result"] is None
