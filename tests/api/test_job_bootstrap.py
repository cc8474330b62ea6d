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
