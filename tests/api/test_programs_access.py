"""Programs API: listing, get_by_title, isolation between users, provider grants and authentication."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.auth import hash_token, new_job_token
from tests import conftest
from tests.api.programs_support import MAIN, UPLOAD, grant, make_provider, post_upload, tar_of
from tests.conftest import upload_program


async def test_a_job_token_cannot_manage_programs(
    client: AsyncClient, db_engine: AsyncEngine, alice: conftest.TestUser
) -> None:
    await upload_program(client, alice, "prog")
    run = await client.post("/api/v1/programs/run/", headers=alice.headers, json={"title": "prog"})
    job_token = new_job_token()
    async with db_engine.begin() as conn:
        await conn.execute(
            text("UPDATE job SET token_hash = :hash WHERE id = :id"),
            {"hash": hash_token(job_token), "id": uuid.UUID(run.json()["id"])},
        )
    headers = {"Authorization": f"Bearer {job_token}"}
    assert (await client.get("/api/v1/programs/", headers=headers)).status_code == 403
    assert (
        await post_upload(client, conftest.TestUser(alice.id, alice.name, job_token), tar_of(MAIN))
    ).status_code == 403
    assert (await client.post("/api/v1/programs/run/", headers=headers, json={"title": "prog"})).status_code == 403


async def test_list_filters_and_order(app: FastAPI, client: AsyncClient, alice: conftest.TestUser) -> None:
    await make_provider(app, "ibm", alice)
    await upload_program(client, alice, "zeta")
    await upload_program(client, alice, "alpha")
    await upload_program(client, alice, "alpha", provider="ibm")
    await upload_program(client, alice, "beta", provider="ibm")

    everything = (await client.get("/api/v1/programs", headers=alice.headers)).json()
    assert [(p["title"], p["provider"]) for p in everything] == [
        ("alpha", None),
        ("alpha", "ibm"),
        ("beta", "ibm"),
        ("zeta", None),
    ]
    serverless = (await client.get("/api/v1/programs/?filter=serverless", headers=alice.headers)).json()
    assert [p["title"] for p in serverless] == ["alpha", "zeta"]
    catalog = (await client.get("/api/v1/programs/?filter=catalog", headers=alice.headers)).json()
    assert [(p["title"], p["provider"]) for p in catalog] == [("alpha", "ibm"), ("beta", "ibm")]
    by_provider = (await client.get("/api/v1/programs/?provider=ibm", headers=alice.headers)).json()
    assert len(by_provider) == 2
    bad = await client.get("/api/v1/programs/?filter=everything", headers=alice.headers)
    assert bad.status_code == 400
    bad_provider = await client.get("/api/v1/programs/", params={"provider": "nul\x00"}, headers=alice.headers)
    assert bad_provider.status_code == 400


async def test_get_by_title(app: FastAPI, client: AsyncClient, alice: conftest.TestUser) -> None:
    await make_provider(app, "ibm", alice)
    mine = await upload_program(client, alice, "fn")
    theirs = await upload_program(client, alice, "fn", provider="ibm")
    assert mine["id"] != theirs["id"]

    for path in ("/api/v1/programs/get_by_title/fn/", "/api/v1/programs/get_by_title/fn"):
        response = await client.get(path, headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == mine["id"]
    for path, params in (
        ("/api/v1/programs/get_by_title/fn", {"provider": "ibm"}),
        ("/api/v1/programs/get_by_title/ibm/fn/", {}),
        ("/api/v1/programs/get_by_title/ibm%2Ffn", {}),
    ):
        response = await client.get(path, params=params, headers=alice.headers)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["id"] == theirs["id"]
        assert response.json()["provider"] == "ibm"
    missing = await client.get("/api/v1/programs/get_by_title/nope/", headers=alice.headers)
    assert missing.status_code == 404
    assert missing.json() == {"message": "Program 'nope' not found."}
    conflicting = await client.get("/api/v1/programs/get_by_title/ibm/fn/?provider=other", headers=alice.headers)
    assert conflicting.status_code == 400
    odd = await client.get("/api/v1/programs/get_by_title/fn", params={"provider": "a\x00b"}, headers=alice.headers)
    assert odd.status_code == 400
    control = await client.get("/api/v1/programs/get_by_title/f%00n", headers=alice.headers)
    assert control.status_code == 400


async def test_provider_title_form_on_upload(app: FastAPI, client: AsyncClient, alice: conftest.TestUser) -> None:
    await make_provider(app, "ibm", alice)
    body = await upload_program(client, alice, "ibm/fn")
    assert (body["title"], body["provider"]) == ("fn", "ibm")
    again = await upload_program(client, alice, "fn", provider="ibm", description="second")
    assert again["id"] == body["id"]


async def test_users_are_isolated(client: AsyncClient, alice: conftest.TestUser, bob: conftest.TestUser) -> None:
    program = await upload_program(client, alice, "secret", env_vars='{"KEY": "value"}')
    assert (await client.get("/api/v1/programs/", headers=bob.headers)).json() == []
    response = await client.get("/api/v1/programs/get_by_title/secret/", headers=bob.headers)
    assert response.status_code == 404
    # Bob's program of the same title is his own, separate one.
    his = await upload_program(client, bob, "secret")
    assert his["id"] != program["id"]
    assert his["env_vars"] == {}
    alices = (await client.get("/api/v1/programs/get_by_title/secret/", headers=alice.headers)).json()
    assert alices["id"] == program["id"]
    assert alices["env_vars"] == {"KEY": "value"}


async def test_provider_programs_follow_group_grants(
    app: FastAPI, client: AsyncClient, alice: conftest.TestUser, bob: conftest.TestUser
) -> None:
    await make_provider(app, "acme", alice)
    program = await upload_program(client, alice, "solver", provider="acme", env_vars='{"API_KEY": "s3cret"}')
    assert program["env_vars"] == {"API_KEY": "s3cret"}

    assert (await client.get("/api/v1/programs/", headers=bob.headers)).json() == []
    path = "/api/v1/programs/get_by_title/acme/solver/"
    assert (await client.get(path, headers=bob.headers)).status_code == 404

    await grant(app, title="solver", provider="acme", user=bob, level="view")
    listing = (await client.get("/api/v1/programs/?filter=catalog", headers=bob.headers)).json()
    assert [p["id"] for p in listing] == [program["id"]]
    assert listing[0]["env_vars"] == {}  # never leak a provider's secrets to its users
    seen = await client.get(path, headers=bob.headers)
    assert seen.status_code == 200
    assert seen.json()["env_vars"] == {}
    admin_view = (await client.get(path, headers=alice.headers)).json()
    assert admin_view["env_vars"] == {"API_KEY": "s3cret"}


async def test_only_provider_admins_upload_provider_programs(
    app: FastAPI, client: AsyncClient, alice: conftest.TestUser, bob: conftest.TestUser, make_user: Any
) -> None:
    await make_provider(app, "acme", alice)
    await upload_program(client, alice, "solver", provider="acme")

    unknown = await post_upload(client, alice, tar_of(MAIN), provider="nobody")
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "Provider 'nobody' not found."
    # A user who cannot see the provider cannot learn it exists.
    hidden = await post_upload(client, bob, tar_of(MAIN), provider="acme")
    assert hidden.status_code == 404
    hidden_title = await post_upload(client, bob, tar_of(MAIN), title="acme/solver")
    assert hidden_title.status_code == 404
    # A user of the provider's programs may see it, but still not upload to it.
    await grant(app, title="solver", provider="acme", user=bob, level="run")
    seen = await post_upload(client, bob, tar_of(MAIN), provider="acme", title="solver")
    assert seen.status_code == 403
    # Another admin of the provider may update the program in place.
    carol = await make_user("carol")
    async with app.state.gateway.sessionmaker.begin() as session:
        from serverless_gateway.services import accounts

        await accounts.add_user_to_group(session, username=carol.name, group_name="acme-admins")
    updated = await post_upload(client, carol, tar_of(MAIN), provider="acme", title="solver", description="new")
    assert updated.status_code == 200, updated.text
    assert updated.json()["description"] == "new"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/programs/"),
        ("GET", "/api/v1/programs"),
        ("GET", "/api/v1/programs/get_by_title/x/"),
        ("POST", UPLOAD),
        ("POST", "/api/v1/programs/run/"),
        ("POST", "/api/v1/programs/validate_arguments/"),
    ],
)
@pytest.mark.parametrize("token", [None, "gw_not-a-real-token", "gwjob_not-a-real-token"])
async def test_authentication_is_required(client: AsyncClient, method: str, path: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "message" in response.json()


async def test_openapi_documents_the_programs_errors(client: AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    upload = paths["/api/v1/programs/upload/"]["post"]
    assert {"200", "400", "401", "403", "404", "413"} <= set(upload["responses"])
    run = paths["/api/v1/programs/run/"]["post"]
    assert {"200", "400", "401", "403", "404", "423", "429"} <= set(run["responses"])
    assert "/api/v1/programs/get_by_title/{title}/" in paths
    assert "/api/v1/programs" not in paths  # the slash-less twins stay out of the document
