"""File quotas: files per function and bytes per user (or provider), checked before and while an upload streams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.services.files import user_files_prefix, user_files_space
from tests.api.jobs_support import add_program
from tests.api.programs_support import make_provider, tune_settings
from tests.api.test_files import PROVIDER_FILES, listed, upload

if TYPE_CHECKING:
    from tests.conftest import TestUser

__all__ = ["tune_settings"]


def temp_leftovers(app: FastAPI) -> list[Path]:
    tmp = Path(app.state.gateway.settings.resolved_storage_url.removeprefix("file://")) / ".tmp"
    return list(tmp.iterdir()) if tmp.is_dir() else []


async def test_files_per_function(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    await add_program(app, alice, "other")
    tune_settings(max_files_per_function=3)
    for name in ("a", "b", "c"):
        assert (await upload(client, alice.headers, name, b"x", function="hello")).status_code == 200
    refused = await upload(client, alice.headers, "d", b"x", function="hello")
    assert refused.status_code == 429, refused.text
    assert refused.json() == {"message": "The function 'hello' already has 3 files, the limit is 3; delete some first."}
    assert (await upload(client, alice.headers, "a", b"replaced", function="hello")).status_code == 200
    assert (await upload(client, alice.headers, "d", b"x", function="other")).status_code == 200
    assert await listed(client, alice.headers, function="hello") == ["a", "b", "c"]
    deleted = await client.delete(
        "/api/v1/files/delete/", headers=alice.headers, params={"function": "hello", "file": "b"}
    )
    assert deleted.status_code == 200
    assert (await upload(client, alice.headers, "d", b"x", function="hello")).status_code == 200
    assert await listed(client, alice.headers, function="hello") == ["a", "c", "d"]


async def test_bytes_per_user_across_functions(
    app: FastAPI, client: AsyncClient, alice: TestUser, bob: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    await add_program(app, alice, "other")
    await add_program(app, bob, "hello")
    tune_settings(max_file_bytes_per_user=1000)
    assert (await upload(client, alice.headers, "six", b"6" * 600, function="hello")).status_code == 200

    # 500 more bytes would pass the quota: the stream is cut at the 401st byte and nothing is kept.
    refused = await upload(client, alice.headers, "five", b"5" * 500, function="other")
    assert refused.status_code == 429, refused.text
    assert refused.json()["message"].startswith("The upload would pass the file quota of 1000 bytes (600 bytes")
    assert await listed(client, alice.headers, function="other") == []
    assert temp_leftovers(app) == []

    assert (await upload(client, alice.headers, "four", b"4" * 400, function="other")).status_code == 200
    full = await upload(client, alice.headers, "empty", b"", function="other")
    assert full.status_code == 429, full.text
    # Replacing a file frees its bytes first; a failed replacement keeps the old file.
    assert (await upload(client, alice.headers, "six", b"s" * 601, function="hello")).status_code == 429
    download = await client.get(
        "/api/v1/files/download/", headers=alice.headers, params={"function": "hello", "file": "six"}
    )
    assert download.content == b"6" * 600
    assert (await upload(client, alice.headers, "six", b"s" * 550, function="hello")).status_code == 200
    # Another user's space is its own.
    assert (await upload(client, bob.headers, "big", b"b" * 1000, function="hello")).status_code == 200


async def test_upload_limit_still_answers_413_under_a_larger_quota(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    tune_settings(max_upload_bytes=100, max_file_bytes_per_user=10_000)
    response = await upload(client, alice.headers, "big", b"x" * 101, function="hello")
    assert response.status_code == 413, response.text
    assert response.json()["message"] == "The file is larger than the limit of 100 bytes."


async def test_provider_files_have_their_own_space(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await make_provider(app, "acme", alice)
    await add_program(app, alice, "fn", provider="acme")
    tune_settings(max_file_bytes_per_user=100)
    params = {"function": "fn", "provider": "acme"}
    assert (await upload(client, alice.headers, "p", b"p" * 100, base=PROVIDER_FILES, **params)).status_code == 200
    assert (await upload(client, alice.headers, "u", b"u" * 100, **params)).status_code == 200
    refused = await upload(client, alice.headers, "p2", b"p", base=PROVIDER_FILES, **params)
    assert refused.status_code == 429, refused.text


async def test_concurrent_uploads_cannot_pass_the_quota_together(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    tune_settings(max_file_bytes_per_user=1000)
    answers = await asyncio.gather(
        *(upload(client, alice.headers, f"part{n}", b"p" * 400, function="hello") for n in range(4))
    )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200, 200, 429, 429], [answer.text for answer in answers]
    assert len(await listed(client, alice.headers, function="hello")) == 2
    assert temp_leftovers(app) == []


async def test_a_file_stored_behind_the_gateways_back_counts_at_the_next_listing(
    app: FastAPI, client: AsyncClient, alice: TestUser, tune_settings: Callable[..., None]
) -> None:
    await add_program(app, alice, "hello")
    tune_settings(max_file_bytes_per_user=1000)
    assert (await upload(client, alice.headers, "a", b"a" * 100, function="hello")).status_code == 200
    # Another replica (or a job writing its DATA_PATH) stores 900 bytes.
    storage = app.state.gateway.storage
    await storage.put_bytes(f"{user_files_prefix(alice.id, None, 'hello')}other", b"o" * 900)
    app.state.gateway.file_usage.changed(user_files_space(alice.id))  # as the minute-long cache would expire
    assert (await upload(client, alice.headers, "b", b"b", function="hello")).status_code == 429
    deleted = await client.delete(
        "/api/v1/files/delete/", headers=alice.headers, params={"function": "hello", "file": "other"}
    )
    assert deleted.status_code == 200
    assert (await upload(client, alice.headers, "b", b"b" * 900, function="hello")).status_code == 200
