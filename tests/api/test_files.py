"""Files API: a user's files of a function, the provider's own files, safe names, size limits, access rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.services.files import key_part, provider_files_prefix, user_files_prefix
from tests.api.jobs_support import add_job_with_token, add_program
from tests.api.programs_support import grant, make_provider, tune_settings

if TYPE_CHECKING:
    from tests.conftest import TestUser

__all__ = ["tune_settings"]

FILES = "/api/v1/files"
PROVIDER_FILES = "/api/v1/files/provider"


async def upload(
    client: AsyncClient,
    headers: dict[str, str],
    name: str,
    data: bytes,
    *,
    base: str = FILES,
    **params: str,
) -> Any:
    return await client.post(f"{base}/upload/", headers=headers, params=params, files={"file": (name, data)})


async def listed(client: AsyncClient, headers: dict[str, str], *, base: str = FILES, **params: str) -> list[str]:
    response = await client.get(f"{base}/", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["files"] == body["results"]
    names: list[str] = body["files"]
    return names


async def test_round_trip(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await add_program(app, alice, "hello")
    data = b"line one\n" + bytes(range(256)) * 10
    response = await upload(client, alice.headers, "data.txt", data, function="hello")
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "File 'data.txt' uploaded.", "file": "data.txt", "size": len(data)}
    await upload(client, alice.headers, "b.json", b"{}", function="hello")

    assert await listed(client, alice.headers, function="hello") == ["b.json", "data.txt"]
    for path in (FILES, f"{FILES}/list/", f"{FILES}/list"):
        body = (await client.get(path, headers=alice.headers, params={"function": "hello"})).json()
        assert body == {"files": ["b.json", "data.txt"], "results": ["b.json", "data.txt"]}

    response = await client.get(
        f"{FILES}/download/", headers=alice.headers, params={"file": "data.txt", "function": "hello"}
    )
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-disposition"] == "attachment; filename=\"data.txt\"; filename*=UTF-8''data.txt"
    assert (
        await client.get(f"{FILES}/download", headers=alice.headers, params={"file": "b.json", "function": "hello"})
    ).content == b"{}"

    # Uploading again replaces the file.
    await upload(client, alice.headers, "b.json", b"[1]", function="hello")
    response = await client.get(
        f"{FILES}/download/", headers=alice.headers, params={"file": "b.json", "function": "hello"}
    )
    assert response.content == b"[1]"

    response = await client.delete(
        f"{FILES}/delete/", headers=alice.headers, params={"file": "data.txt", "function": "hello"}
    )
    assert response.status_code == 200
    assert response.json()["message"]
    assert await listed(client, alice.headers, function="hello") == ["b.json"]
    for method, path in (("GET", "download/"), ("DELETE", "delete/"), ("DELETE", "delete")):
        response = await client.request(
            method, f"{FILES}/{path}", headers=alice.headers, params={"file": "data.txt", "function": "hello"}
        )
        assert response.status_code == 404, (method, path)
        assert "data.txt" in response.json()["message"]


async def test_empty_and_unicode_files(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await add_program(app, alice, "hello")
    assert (await upload(client, alice.headers, "empty", b"", function="hello")).json()["size"] == 0
    name = "résumé ü 文件.txt"
    assert (await upload(client, alice.headers, name, "ünï".encode(), function="hello")).status_code == 200
    assert await listed(client, alice.headers, function="hello") == ["empty", name]
    empty = await client.get(f"{FILES}/download/", headers=alice.headers, params={"file": "empty", "function": "hello"})
    assert (empty.status_code, empty.content) == (200, b"")
    response = await client.get(f"{FILES}/download/", headers=alice.headers, params={"file": name, "function": "hello"})
    assert response.content == "ünï".encode()
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="r_sum_ _ __.txt"; ')
    assert disposition.endswith("filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%BC%20%E6%96%87%E4%BB%B6.txt")


async def test_needs_a_token(client: AsyncClient) -> None:
    params = {"function": "hello", "file": "a"}
    for method, path in (
        ("GET", "/"),
        ("GET", "/list/"),
        ("GET", "/download/"),
        ("DELETE", "/delete/"),
        ("POST", "/upload/"),
    ):
        for base in (FILES, PROVIDER_FILES):
            response = await client.request(method, base + path, params=params)
            assert response.status_code == 401, (method, base + path)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_users_are_isolated(app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser) -> None:
    await add_program(app, alice, "hello")
    await upload(client, alice.headers, "secret.txt", b"alice's", function="hello")
    # Bob has no function "hello": 404 everywhere.
    assert (await client.get(f"{FILES}/", headers=bob.headers, params={"function": "hello"})).status_code == 404
    params = {"function": "hello", "file": "secret.txt"}
    assert (await client.get(f"{FILES}/download/", headers=bob.headers, params=params)).status_code == 404
    assert (await client.delete(f"{FILES}/delete/", headers=bob.headers, params=params)).status_code == 404
    assert (await upload(client, bob.headers, "x", b"x", function="hello")).status_code == 404
    # With his own "hello", Bob has his own, empty folder.
    await add_program(app, bob, "hello")
    assert await listed(client, bob.headers, function="hello") == []
    assert (await client.get(f"{FILES}/download/", headers=bob.headers, params=params)).status_code == 404
    assert await listed(client, alice.headers, function="hello") == ["secret.txt"]


async def test_function_is_required_and_must_exist(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    assert (await client.get(f"{FILES}/", headers=alice.headers)).status_code == 400
    assert (await client.get(f"{FILES}/", headers=alice.headers, params={"function": ""})).status_code == 400
    assert (await client.get(f"{FILES}/", headers=alice.headers, params={"function": "nope"})).status_code == 404
    assert (await client.get(f"{FILES}/download/", headers=alice.headers, params={"function": "x"})).status_code == 400
    response = await client.get(f"{FILES}/", headers=alice.headers, params={"function": "nope", "provider": "ghost"})
    assert response.status_code == 404
    for bad in ({"function": "a\x00b"}, {"function": "hello", "provider": "a\x00b"}, {"function": "a/b/c"}):
        assert (await client.get(f"{FILES}/", headers=alice.headers, params=bad)).status_code == 400, bad
        assert (await client.get(f"{PROVIDER_FILES}/", headers=alice.headers, params=bad)).status_code == 400, bad


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "../etc/passwd", "a\\b", "nul\x00", "bell\x07", "del\x7f", "x" * 256, "é" * 128]
)
async def test_unsafe_names_are_refused(app: FastAPI, client: AsyncClient, alice: TestUser, name: str) -> None:
    await add_program(app, alice, "hello")
    params = {"function": "hello", "file": name}
    for method, path in (("GET", "download/"), ("DELETE", "delete/")):
        response = await client.request(method, f"{FILES}/{path}", headers=alice.headers, params=params)
        assert response.status_code == 400, (method, name, response.text)
        assert response.json()["message"]
    if name:
        # Built by hand: httpx would percent-encode control characters in a multipart file name.
        body = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n\r\ndata\r\n--XYZ--\r\n'
        headers = {**alice.headers, "content-type": "multipart/form-data; boundary=XYZ"}
        response = await client.post(
            f"{FILES}/upload/", headers=headers, params={"function": "hello"}, content=body % name.encode()
        )
        assert response.status_code == 400, (name, response.text)
    assert await listed(client, alice.headers, function="hello") == []


async def test_percent_encoded_nul_is_refused(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await add_program(app, alice, "hello")
    response = await client.get(f"{FILES}/download/?function=hello&file=a%00b", headers=alice.headers)
    assert response.status_code == 400
    response = await client.get(f"{FILES}/download/?function=hello&file=..%2Fsecret", headers=alice.headers)
    assert response.status_code == 400


async def test_longest_name_is_accepted(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await add_program(app, alice, "hello")
    name = "n" * 255
    assert (await upload(client, alice.headers, name, b"x", function="hello")).status_code == 200
    assert await listed(client, alice.headers, function="hello") == [name]


async def test_upload_size_limits(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    tune_settings(max_upload_bytes=1000)
    assert (await upload(client, alice.headers, "fits", b"x" * 1000, function="hello")).status_code == 200
    response = await upload(client, alice.headers, "big", b"x" * 1001, function="hello")
    assert response.status_code == 413
    assert "1000" in response.json()["message"]
    # Far over the limit: refused by Content-Length before the body is read.
    response = await upload(client, alice.headers, "huge", b"x" * (3 * 1024 * 1024), function="hello")
    assert response.status_code == 413
    assert await listed(client, alice.headers, function="hello") == ["fits"]


async def test_upload_needs_a_multipart_file(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    await add_program(app, alice, "hello")
    url = f"{FILES}/upload/"
    params = {"function": "hello"}
    assert (await client.post(url, headers=alice.headers, params=params)).status_code == 400
    assert (await client.post(url, headers=alice.headers, params=params, json={"file": "x"})).status_code == 400
    response = await client.post(
        url, headers=alice.headers, params=params, data={"other": "field"}, files={"x": ("a", b"b")}
    )
    assert response.status_code == 400
    assert "file" in response.json()["message"]
    response = await client.post(url, headers=alice.headers, params=params, files={"file": (None, b"not a file")})
    assert response.status_code == 400
    broken = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nunterminated'
    response = await client.post(
        url,
        headers={**alice.headers, "content-type": "multipart/form-data; boundary=XYZ"},
        params=params,
        content=broken,
    )
    assert response.status_code == 400
    response = await client.post(
        url, headers={**alice.headers, "content-type": "multipart/form-data"}, params=params, content=b"x"
    )
    assert response.status_code == 400
    # Other fields before the file are skipped.
    response = await client.post(
        url, headers=alice.headers, params=params, data={"note": "hi"}, files={"file": ("after.txt", b"payload")}
    )
    assert response.status_code == 200, response.text
    assert await listed(client, alice.headers, function="hello") == ["after.txt"]


async def test_provider_files(
    app: FastAPI, client: AsyncClient, make_user: Callable[..., Any], alice: TestUser, bob: TestUser
) -> None:
    carol = await make_user("carol")
    await make_provider(app, "acme", carol)
    await add_program(app, carol, "solver", provider="acme")
    await grant(app, title="solver", provider="acme", user=alice, level="run")
    params = {"function": "solver", "provider": "acme"}

    response = await upload(client, carol.headers, "model.bin", b"weights", base=PROVIDER_FILES, **params)
    assert response.status_code == 200, response.text
    assert await listed(client, carol.headers, base=PROVIDER_FILES, **params) == ["model.bin"]
    body = (await client.get(f"{PROVIDER_FILES}/list/", headers=carol.headers, params=params)).json()
    assert body["results"] == ["model.bin"]
    assert (await client.get(PROVIDER_FILES, headers=carol.headers, params=params)).status_code == 200
    download = await client.get(
        f"{PROVIDER_FILES}/download/", headers=carol.headers, params={**params, "file": "model.bin"}
    )
    assert download.content == b"weights"
    assert await listed(client, carol.headers, base=PROVIDER_FILES, function="acme/solver") == ["model.bin"]

    # Alice may run the function: she has her own user folder for it, but no access to the provider's files.
    assert await listed(client, alice.headers, **params) == []
    assert (await upload(client, alice.headers, "mine.txt", b"alice", **params)).status_code == 200
    assert await listed(client, alice.headers, function="acme/solver") == ["mine.txt"]
    for method, path in (("GET", "/"), ("GET", "/download/"), ("DELETE", "/delete/"), ("POST", "/upload/")):
        response = await client.request(
            method, PROVIDER_FILES + path, headers=alice.headers, params={**params, "file": "model.bin"}
        )
        assert response.status_code == 404, (method, path)
    # The provider's folder and the admin's own user folder for the function are different places.
    assert await listed(client, carol.headers, **params) == []
    # Bob sees neither the function nor the provider.
    assert (await client.get(f"{FILES}/", headers=bob.headers, params=params)).status_code == 404
    assert (await client.get(f"{PROVIDER_FILES}/", headers=bob.headers, params=params)).status_code == 404
    # The provider is required, must exist, and must hold the function.
    assert (
        await client.get(f"{PROVIDER_FILES}/", headers=carol.headers, params={"function": "solver"})
    ).status_code == 400
    assert (
        await client.get(f"{PROVIDER_FILES}/", headers=carol.headers, params={"function": "solver", "provider": "x"})
    ).status_code == 404
    assert (
        await client.get(f"{PROVIDER_FILES}/", headers=carol.headers, params={"function": "other", "provider": "acme"})
    ).status_code == 404

    response = await client.delete(
        f"{PROVIDER_FILES}/delete/", headers=carol.headers, params={**params, "file": "model.bin"}
    )
    assert response.status_code == 200
    assert await listed(client, carol.headers, base=PROVIDER_FILES, **params) == []
    response = await client.delete(
        f"{PROVIDER_FILES}/delete", headers=carol.headers, params={**params, "file": "model.bin"}
    )
    assert response.status_code == 404


async def test_job_token_reaches_its_own_function_only(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    hello = await add_program(app, alice, "hello")
    await add_program(app, alice, "other")
    _, headers = await add_job_with_token(app, alice, hello)
    assert (await upload(client, headers, "from-job.txt", b"out", function="hello")).status_code == 200
    assert await listed(client, alice.headers, function="hello") == ["from-job.txt"]
    assert await listed(client, headers, function="hello") == ["from-job.txt"]
    assert (await client.get(f"{FILES}/", headers=headers, params={"function": "other"})).status_code == 404
    assert (await upload(client, headers, "x", b"x", function="other")).status_code == 404


async def test_odd_titles_are_refused(app: FastAPI, client: AsyncClient, alice: TestUser) -> None:
    for title in ("..", ".", "a%2Fb", "back\\slash", "ü" * 200, "bad title!<>"):
        await add_program(app, alice, title)  # a row from before titles were safe names
        response = await upload(client, alice.headers, "f", title.encode(), function=title)
        assert response.status_code == 400, title
        assert "letters, digits, '-', '_' or '.'" in response.json()["message"]
        listing = await client.get(f"{FILES}/", headers=alice.headers, params={"function": title})
        assert listing.status_code == 400


def test_storage_keys() -> None:
    assert key_part("hello") == "hello"
    assert key_part("..") == "%2E%2E"
    assert key_part(".") == "%2E"
    assert key_part("a%b") == "a%25b"
    assert key_part("a\\b") == "a%5Cb"
    assert key_part("ü" * 200).startswith("%%sha256-")
    assert user_files_prefix("u1", None, "hello") == "files/users/u1/_/hello/"
    assert user_files_prefix("u1", "acme", "hello") == "files/users/u1/acme/hello/"
    assert provider_files_prefix("acme", "..") == "files/providers/acme/%2E%2E/"
