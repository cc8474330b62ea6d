"""programs/run with an Idempotency-Key: replays give the first job, another body is 409, races make one job."""

from __future__ import annotations

import asyncio

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.programs_support import RUN
from tests.conftest import TestUser, upload_program


async def count_jobs(db_engine: AsyncEngine, user: TestUser) -> int:
    async with db_engine.connect() as conn:
        result = await conn.execute(text("SELECT count(*) FROM job WHERE author_id = :u"), {"u": user.id})
        return int(result.scalar_one())


def keyed(user: TestUser, key: str) -> dict[str, str]:
    return {**user.headers, "Idempotency-Key": key}


async def test_the_same_key_and_body_give_back_the_first_job(
    client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    await upload_program(client, alice, "hello")
    body = {"title": "hello", "arguments": {"n": 1, "m": [1, 2]}, "config": {"workers": 1}}
    first = await client.post(RUN, headers=keyed(alice, "retry-1"), json=body)
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    same_in_other_order = {"config": {"workers": 1}, "arguments": {"m": [1, 2], "n": 1}, "title": "hello"}
    for replay_body in (body, same_in_other_order):
        again = await client.post(RUN, headers=keyed(alice, "retry-1"), json=replay_body)
        assert again.status_code == first.status_code
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
    assert await count_jobs(db_engine, alice) == 1
    other_key = await client.post(RUN, headers=keyed(alice, "retry-2"), json=body)
    assert other_key.json()["id"] != first.json()["id"]
    unkeyed = await client.post(RUN, headers=alice.headers, json=body)
    assert unkeyed.json()["id"] not in (first.json()["id"], other_key.json()["id"])
    assert await count_jobs(db_engine, alice) == 3


async def test_a_replay_shows_the_jobs_status_now(client: AsyncClient, alice: TestUser) -> None:
    await upload_program(client, alice, "hello")
    first = (await client.post(RUN, headers=keyed(alice, "k"), json={"title": "hello"})).json()
    assert (await client.post(f"/api/v1/jobs/{first['id']}/stop/", headers=alice.headers)).status_code == 200
    again = (await client.post(RUN, headers=keyed(alice, "k"), json={"title": "hello"})).json()
    assert again == {"id": first["id"], "status": "STOPPED"}


async def test_another_body_with_the_same_key_is_a_conflict(
    client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    await upload_program(client, alice, "hello")
    assert (
        await client.post(RUN, headers=keyed(alice, "k1"), json={"title": "hello", "arguments": {"a": 1}})
    ).is_success
    clash = await client.post(RUN, headers=keyed(alice, "k1"), json={"title": "hello", "arguments": {"a": 2}})
    assert clash.status_code == 409
    assert "different request body" in clash.json()["message"]
    assert await count_jobs(db_engine, alice) == 1


async def test_keys_belong_to_their_user(
    client: AsyncClient, db_engine: AsyncEngine, alice: TestUser, bob: TestUser
) -> None:
    await upload_program(client, alice, "hello")
    await upload_program(client, bob, "hello")
    a = await client.post(RUN, headers=keyed(alice, "shared"), json={"title": "hello"})
    b = await client.post(RUN, headers=keyed(bob, "shared"), json={"title": "hello"})
    assert a.status_code == b.status_code == 200
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers


async def test_concurrent_requests_with_one_key_make_one_job(
    client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    await upload_program(client, alice, "hello")
    answers = await asyncio.gather(
        *(client.post(RUN, headers=keyed(alice, "race"), json={"title": "hello"}) for _ in range(8))
    )
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum("idempotent-replayed" in a.headers for a in answers) == 7
    assert await count_jobs(db_engine, alice) == 1


async def test_a_failed_first_request_leaves_the_key_free(
    client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    missing = await client.post(RUN, headers=keyed(alice, "early"), json={"title": "later"})
    assert missing.status_code == 404
    await upload_program(client, alice, "later")
    created = await client.post(RUN, headers=keyed(alice, "early"), json={"title": "later"})
    assert created.status_code == 200
    assert "idempotent-replayed" not in created.headers
    assert await count_jobs(db_engine, alice) == 1


async def test_an_expired_key_starts_a_new_job_and_old_keys_are_cleaned(
    client: AsyncClient, db_engine: AsyncEngine, alice: TestUser
) -> None:
    await upload_program(client, alice, "hello")
    first = (await client.post(RUN, headers=keyed(alice, "old"), json={"title": "hello"})).json()
    other = (await client.post(RUN, headers=keyed(alice, "other-old"), json={"title": "hello"})).json()
    async with db_engine.begin() as conn:
        await conn.execute(text("UPDATE run_idempotency_key SET created_at = now() - interval '25 hours'"))
    again = await client.post(RUN, headers=keyed(alice, "old"), json={"title": "hello", "arguments": {"x": 1}})
    assert again.status_code == 200
    assert again.json()["id"] not in (first["id"], other["id"])
    async with db_engine.connect() as conn:
        keys = (await conn.execute(text("SELECT key FROM run_idempotency_key ORDER BY key"))).scalars().all()
    assert keys == ["old"]


@pytest.mark.parametrize("key", ["x" * 256, "has space", "tab\there", "caf\u00e9".encode().decode("latin-1")])
async def test_a_hostile_key_is_refused(client: AsyncClient, db_engine: AsyncEngine, alice: TestUser, key: str) -> None:
    await upload_program(client, alice, "hello")
    answer = await client.post(
        RUN,
        headers=[(b"Authorization", f"Bearer {alice.token}".encode()), (b"Idempotency-Key", key.encode("latin-1"))],
        json={"title": "hello"},
    )
    assert answer.status_code == 400
    assert "message" in answer.json()
    assert await count_jobs(db_engine, alice) == 0


async def test_the_key_is_documented(client: AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/api/v1/programs/run/"]["post"]
    names = {p["name"] for p in operation["parameters"]}
    assert "Idempotency-Key" in names
    assert "409" in operation["responses"]
