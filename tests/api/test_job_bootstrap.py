"""What only a job's launcher calls: the one-time bootstrap and the end report refuse everyone else."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.auth import hash_token, new_bootstrap_code
from tests.api.jobs_support import add_job, add_job_with_token, add_program
from tests.conftest import TestUser


async def test_the_bootstrap_code_works_once_and_for_its_job_only(
    app: FastAPI, client: AsyncClient, alice: TestUser
) -> None:
    program = await add_program(app, alice, "boot")
    code = new_bootstrap_code()
    job_id = await add_job(app, alice, program, status="PENDING", arguments='{"s": 1}', bootstrap_hash=hash_token(code))
    other = await add_job(app, alice, program, status="PENDING", bootstrap_hash=hash_token(new_bootstrap_code()))
    auth = {"Authorization": f"Bearer {code}"}
    assert (await client.post(f"/api/v1/jobs/{other}/bootstrap/", headers=auth, json={})).status_code == 401
    assert (await client.post(f"/api/v1/jobs/{job_id}/bootstrap/", json={})).status_code == 401
    wrong = {"Authorization": f"Bearer {alice.token}"}  # a user's token is no bootstrap code
    assert (await client.post(f"/api/v1/jobs/{job_id}/bootstrap/", headers=wrong, json={})).status_code == 401
    first = await client.post(f"/api/v1/jobs/{job_id}/bootstrap/", headers=auth, json={})
    assert first.status_code == 200, first.text
    assert first.json()["arguments"] == '{"s": 1}'
    assert first.json()["token"].startswith("gwjob_")
    again = await client.post(f"/api/v1/jobs/{job_id}/bootstrap/", headers=auth, json={})
    assert again.status_code == 401  # spent
    assert (await client.post(f"/api/v1/jobs/{uuid.uuid4()}/bootstrap/", headers=auth, json={})).status_code == 401


async def test_only_the_job_itself_reports_its_end(
    app: FastAPI, client: AsyncClient, alice: TestUser
) -> None:
    program = await add_program(app, alice, "ender")
    job_id, job_auth = await add_job_with_token(app, alice, program)
    other_id, _ = await add_job_with_token(app, alice, program)
    body = {"exit_code": 0}
    assert (await client.post(f"/api/v1/jobs/{job_id}/ended/", json=body)).status_code == 401
    assert (await client.post(f"/api/v1/jobs/{job_id}/ended/", headers=alice.headers, json=body)).status_code == 403
    assert (await client.post(f"/api/v1/jobs/{other_id}/ended/", headers=job_auth, json=body)).status_code == 404
    bad = {"exit_code": "zero"}
    assert (await client.post(f"/api/v1/jobs/{job_id}/ended/", headers=job_auth, json=bad)).status_code == 400
    assert (await client.post(f"/api/v1/jobs/{job_id}/ended/", headers=job_auth, json=body)).status_code == 202


async def _upload_file(client: AsyncClient, user: TestUser, function: str, name: str) -> None:
    answer = await client.post(
        "/api/v1/files/upload/", params={"function": function}, headers=user.headers, files={"file": (name, b"x")}
    )
    assert answer.status_code == 200, answer.text


async def test_the_bootstrap_names_the_authors_files_of_the_function_and_no_one_elses(
    app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser
) -> None:
    program = await add_program(app, alice, "with-files")
    await add_program(app, alice, "elsewhere")
    await add_program(app, bob, "with-files")  # the same title, another author
    for name in ("b.txt", "a.txt"):
        await _upload_file(client, alice, "with-files", name)
    await _upload_file(client, alice, "elsewhere", "not-this-function.txt")
    await _upload_file(client, bob, "with-files", "bobs-secret.txt")
    code = new_bootstrap_code()
    job_id = await add_job(app, alice, program, status="PENDING", bootstrap_hash=hash_token(code))
    answer = await client.post(
        f"/api/v1/jobs/{job_id}/bootstrap/", headers={"Authorization": f"Bearer {code}"}, json={}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["files"] == ["a.txt", "b.txt"]
    # Exactly what the job's own listing with its new token gives (which the launcher no longer needs to make).
    listed = await client.get(
        "/api/v1/files/",
        params={"function": "with-files"},
        headers={"Authorization": f"Bearer {answer.json()['token']}"},
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["files"] == answer.json()["files"]
