"""Programs API: upload (upsert), list, get_by_title, access rules and the bad-input answers of upload."""

from __future__ import annotations

import hashlib
import tarfile
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.auth import hash_token, new_job_token
from serverless_gateway.storage.base import ObjectInfo, StorageUnavailable
from tests import conftest
from tests.api.programs_support import UPLOAD, grant, make_provider, special, tar_of, tune_settings
from tests.conftest import make_tar, upload_program

__all__ = ["tune_settings"]

MAIN = ("main.py", b"print('hi')\n")


async def post_upload(client: AsyncClient, user: conftest.TestUser, archive: bytes | None, **fields: Any) -> Any:
    data = {"title": "prog", "entrypoint": "main.py", **fields}
    data = {key: value for key, value in data.items() if value is not None}
    files = {"artifact": ("artifact.tar", archive, "application/x-tar")} if archive is not None else None
    return await client.post(UPLOAD, headers=user.headers, data=data, files=files)


async def test_upload_creates_a_program(app: FastAPI, client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = make_tar({"main.py": "print('hello')\n", "lib/util.py": "X = 1\n"})
    response = await post_upload(
        client,
        alice,
        archive,
        title="hello",
        dependencies='["numpy>=1.20", "qiskit==1.0.0"]',
        env_vars='{"MODE": "fast"}',
        description="says hello",
        version="1.2.3",
        type="application",
        arguments_schema='{"type": "object", "properties": {"n": {"type": "integer"}}}',
        runner="ray",
        arguments="{}",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    digest = hashlib.sha256(archive).hexdigest()
    assert body["title"] == "hello"
    assert body["entrypoint"] == "main.py"
    assert body["artifact"] == digest
    assert body["dependencies"] == ["numpy>=1.20", "qiskit==1.0.0"]
    assert body["env_vars"] == {"MODE": "fast"}
    assert body["provider"] is None
    assert body["type"] == "APPLICATION"
    assert body["version"] == "1.2.3"
    assert body["description"] == "says hello"
    assert body["disabled"] is False
    assert body["disabled_reason"] is None
    assert body["arguments_schema"] == {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert body["created"]
    assert body["updated"]
    stored = await app.state.gateway.storage.get_bytes(f"artifacts/{digest}.tar")
    assert stored == archive


async def test_upload_defaults(client: AsyncClient, alice: conftest.TestUser) -> None:
    body = await upload_program(client, alice, "plain")
    assert body["dependencies"] == []
    assert body["env_vars"] == {}
    assert body["type"] == "GENERIC"
    assert body["description"] == ""
    assert body["arguments_schema"] is None


async def test_upload_again_updates_the_same_program(client: AsyncClient, alice: conftest.TestUser) -> None:
    first = await upload_program(
        client, alice, "prog", description="v1", dependencies='["numpy"]', arguments_schema='{"type": "object"}'
    )
    second = await upload_program(
        client, alice, "prog", files={"run.py": "print(2)\n"}, entrypoint="run.py", version="2.0"
    )
    assert second["id"] == first["id"]
    assert second["entrypoint"] == "run.py"
    assert second["version"] == "2.0"
    assert second["artifact"] != first["artifact"]
    # Fields not sent again are kept.
    assert second["description"] == "v1"
    assert second["dependencies"] == ["numpy"]
    assert second["arguments_schema"] == {"type": "object"}
    assert second["created"] == first["created"]
    assert second["updated"] >= first["updated"]
    # `{}` removes the schema, as the official client documents.
    third = await upload_program(client, alice, "prog", arguments_schema="{}", dependencies="[]")
    assert third["id"] == first["id"]
    assert third["arguments_schema"] is None
    assert third["dependencies"] == []
    listing = (await client.get("/api/v1/programs/", headers=alice.headers)).json()
    assert [p["id"] for p in listing] == [first["id"]]


async def test_identical_artifacts_are_stored_once(app: FastAPI, client: AsyncClient, alice: conftest.TestUser) -> None:
    one = await upload_program(client, alice, "one")
    two = await upload_program(client, alice, "two")
    assert one["artifact"] == two["artifact"]
    objects: list[ObjectInfo] = await app.state.gateway.storage.list("artifacts/")
    assert [o.key for o in objects].count(f"{one['artifact']}.tar") == 1


@pytest.mark.parametrize(
    "dependencies",
    [
        '["qiskit>=1.0", "numpy==1.26.*"]',
        ["qiskit>=1.0", "numpy==1.26.*"],
    ],
    ids=["json-string", "repeated-fields"],
)
async def test_dependencies_forms(client: AsyncClient, alice: conftest.TestUser, dependencies: str | list[str]) -> None:
    response = await post_upload(client, alice, tar_of(MAIN), dependencies=dependencies)
    assert response.status_code == 200, response.text
    assert response.json()["dependencies"] == ["qiskit>=1.0", "numpy==1.26.*"]


@pytest.mark.parametrize(
    ("dependencies", "fragment"),
    [
        ('["not a requirement!"]', "not a valid requirement"),
        ('["ok", 3]', "JSON list of strings"),
        ('["unterminated"', "not a valid JSON list"),
        ("qiskit >= = 1", "not a valid requirement"),
    ],
)
async def test_bad_dependencies(
    client: AsyncClient, alice: conftest.TestUser, dependencies: str, fragment: str
) -> None:
    response = await post_upload(client, alice, tar_of(MAIN), dependencies=dependencies)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


async def test_dependency_allowlist(
    client: AsyncClient, alice: conftest.TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(dependency_allowlist=["numpy", "Qiskit_IBM_Runtime"])
    ok = await post_upload(client, alice, tar_of(MAIN), dependencies='["numpy>=1", "qiskit-ibm-runtime"]')
    assert ok.status_code == 200, ok.text
    refused = await post_upload(client, alice, tar_of(MAIN), dependencies='["requests"]')
    assert refused.status_code == 400
    assert "'requests' is not an allowed dependency" in refused.json()["message"]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"title": None}, "title"),
        ({"title": ""}, "title"),
        ({"title": "a/b/c"}, "at most one slash"),
        ({"entrypoint": None}, "entrypoint"),
        ({"entrypoint": "/etc/passwd"}, "relative file path"),
        ({"entrypoint": "../main.py"}, "relative file path"),
        ({"image": "docker.io/me/fn:1"}, "images are not supported"),
        ({"type": "QUANTUM"}, "GENERIC, APPLICATION, CIRCUIT"),
        ({"env_vars": "[1]"}, "JSON object"),
        ({"env_vars": '{"A": 1}'}, "must be a string"),
        ({"env_vars": '{"1BAD": "x"}'}, "not a valid environment variable name"),
        ({"env_vars": "{oops"}, "not valid JSON"),
        ({"arguments_schema": "{oops"}, "not valid JSON"),
        ({"arguments_schema": '{"type": 5}'}, "not a valid JSON Schema"),
        ({"arguments_schema": "[1]"}, "object or a boolean"),
        ({"version": "v" * 65}, "at most 64"),
        ({"title": "trailing-newline\n"}, "title"),
        ({"env_vars": '{"A": "\\ud800"}'}, "invalid character"),
        ({"env_vars": '{"A": "nul\\u0000"}'}, "invalid character"),
        ({"provider": "not a name!"}, "not a valid provider name"),
    ],
)
async def test_upload_bad_fields(
    client: AsyncClient, alice: conftest.TestUser, fields: dict[str, Any], fragment: str
) -> None:
    response = await post_upload(client, alice, tar_of(MAIN), **fields)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]


async def test_upload_without_artifact(client: AsyncClient, alice: conftest.TestUser) -> None:
    response = await post_upload(client, alice, None)
    assert response.status_code == 400
    assert "artifact" in response.json()["message"]


async def test_upload_of_a_non_tar(client: AsyncClient, alice: conftest.TestUser) -> None:
    response = await post_upload(client, alice, b"print('this is not a tar')\n" * 50)
    assert response.status_code == 400
    assert response.json()["message"] == "artifact is not a tar archive"


async def test_upload_of_an_empty_file(client: AsyncClient, alice: conftest.TestUser) -> None:
    response = await post_upload(client, alice, b"")
    assert response.status_code == 400
    assert "not a tar archive" in response.json()["message"]


async def test_upload_of_a_truncated_gzip(client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = tar_of(MAIN, ("big.bin", bytes(range(256)) * 400), gzip=True)
    response = await post_upload(client, alice, archive[: len(archive) // 2])
    assert response.status_code == 400
    assert "tar archive" in response.json()["message"]


async def test_upload_without_the_entrypoint(client: AsyncClient, alice: conftest.TestUser) -> None:
    response = await post_upload(client, alice, tar_of(("other.py", b"")), entrypoint="main.py")
    assert response.status_code == 400
    assert response.json()["message"] == "entrypoint 'main.py' not found in the artifact"


async def test_entrypoint_in_a_subdirectory_and_dot_prefix(client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = tar_of(special("./src", tarfile.DIRTYPE), ("./src/job.py", b"print(1)\n"))
    response = await post_upload(client, alice, archive, entrypoint="src/job.py")
    assert response.status_code == 200, response.text


async def test_gzip_tar_is_accepted(client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = tar_of(MAIN, gzip=True)
    response = await post_upload(client, alice, archive)
    assert response.status_code == 200, response.text
    assert response.json()["artifact"] == hashlib.sha256(archive).hexdigest()


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (("/etc/evil.py", b"x"), "absolute path"),
        (("../evil.py", b"x"), "'..'"),
        (("lib/../../evil.py", b"x"), "'..'"),
        (special("escape", tarfile.SYMTYPE, "../../etc/passwd"), "symlink pointing outside"),
        (special("lib/escape", tarfile.SYMTYPE, "../.."), "symlink pointing outside"),
        (special("abs", tarfile.SYMTYPE, "/etc/passwd"), "symlink to an absolute path"),
        (special("hard", tarfile.LNKTYPE, "../outside"), "hard link pointing outside"),
        (special("hardabs", tarfile.LNKTYPE, "/etc/shadow"), "hard link to an absolute path"),
        (special("tty", tarfile.CHRTYPE), "device file"),
        (special("disk", tarfile.BLKTYPE), "device file"),
        (special("pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "nested-dotdot",
        "symlink-outside",
        "nested-symlink-outside",
        "symlink-absolute",
        "hardlink-outside",
        "hardlink-absolute",
        "char-device",
        "block-device",
        "fifo",
    ],
)
async def test_unsafe_members_are_refused(
    client: AsyncClient, alice: conftest.TestUser, member: tarfile.TarInfo | tuple[str, bytes], fragment: str
) -> None:
    name = member.name if isinstance(member, tarfile.TarInfo) else member[0]
    response = await post_upload(client, alice, tar_of(MAIN, member))
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert fragment in message
    assert repr(name) in message


async def test_links_inside_the_archive_are_accepted(client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = tar_of(
        MAIN,
        ("data/a.txt", b"a"),
        special("data/alias.txt", tarfile.SYMTYPE, "a.txt"),
        special("copy.txt", tarfile.LNKTYPE, "data/a.txt"),
    )
    response = await post_upload(client, alice, archive)
    assert response.status_code == 200, response.text


async def test_too_many_members(
    client: AsyncClient, alice: conftest.TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(artifact_max_members=5)
    archive = tar_of(MAIN, *[(f"f{i}.txt", b"") for i in range(5)], gzip=True)
    response = await post_upload(client, alice, archive)
    assert response.status_code == 400
    assert "more than 5 members" in response.json()["message"]


async def test_unpacked_size_limit(
    client: AsyncClient, alice: conftest.TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(artifact_max_unpacked_bytes=10_000)
    archive = tar_of(MAIN, ("zeros.bin", bytes(20_000)), gzip=True)
    response = await post_upload(client, alice, archive)
    assert response.status_code == 400
    assert "unpacks to more than 10000 bytes" in response.json()["message"]
    assert "'zeros.bin'" in response.json()["message"]


async def test_oversized_artifact(client: AsyncClient, alice: conftest.TestUser) -> None:
    # The limit in the test settings is 1 MiB; this one passes the body limit and fails the exact check.
    archive = tar_of(MAIN, ("noise.bin", bytes(1024 * 1024 + 10_000)))
    response = await post_upload(client, alice, archive)
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["message"]


async def test_oversized_body_refused_by_content_length(client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = tar_of(MAIN, ("noise.bin", bytes(3 * 1024 * 1024)))
    response = await post_upload(client, alice, archive)
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["message"]


async def test_oversized_body_without_content_length_is_counted(client: AsyncClient, alice: conftest.TestUser) -> None:
    boundary = "gatewayboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="entrypoint"\r\n\r\nmain.py\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="a.tar"\r\n'
        "Content-Type: application/x-tar\r\n\r\n"
    ).encode()
    sent = 0

    async def body() -> Any:
        nonlocal sent
        yield head
        for _ in range(64):  # 4 MiB of artifact, in 64 KiB chunks, without a Content-Length
            sent += 1
            yield bytes(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = await client.post(UPLOAD, headers=headers, content=body())
    assert response.status_code == 413, response.text
    assert "larger than the limit" in response.json()["message"]
    assert sent < 64  # reading stopped at the limit


async def test_storage_outage_answers_503(
    app: FastAPI, client: AsyncClient, alice: conftest.TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unreachable:
        async def exists(self, key: str) -> bool:
            raise StorageUnavailable("connection refused")

    monkeypatch.setattr(app.state.gateway, "storage", Unreachable())
    response = await post_upload(client, alice, tar_of(MAIN))
    assert response.status_code == 503
    assert "storage is unavailable" in response.json()["message"]
    monkeypatch.undo()
    listing = await client.get("/api/v1/programs/", headers=alice.headers)
    assert listing.json() == []  # nothing half-made


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
