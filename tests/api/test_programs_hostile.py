"""Crafted artifacts uploaded through the API: each is a quick 400 whose message says what was refused."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable

import pytest
from httpx import AsyncClient

from tests import conftest
from tests.api.programs_support import MAIN, post_upload, special, tar_of, tune_settings
from tests.services.test_artifacts_hostile import header_bomb, pax_record, raw_header, symlink_ladder, with_main

__all__ = ["tune_settings"]


async def refused(client: AsyncClient, user: conftest.TestUser, archive: bytes, *fragments: str) -> str:
    started = time.perf_counter()
    response = await post_upload(client, user, archive)
    assert time.perf_counter() - started < 5
    assert response.status_code == 400, response.text
    message: str = response.json()["message"]
    for fragment in fragments:
        assert fragment in message
    return message


async def test_a_ladder_of_directory_symlinks(client: AsyncClient, alice: conftest.TestUser) -> None:
    archive = symlink_ladder(24)
    with tarfile.open(fileobj=io.BytesIO(archive)) as opened:
        assert len(opened.getmembers()) == 74
    await refused(client, alice, archive, "'l0/a'", "symlinks to directories or to other symlinks are refused")


async def test_a_tar_bomb(client: AsyncClient, alice: conftest.TestUser, tune_settings: Callable[..., None]) -> None:
    tune_settings(artifact_max_unpacked_bytes=4 * 1024 * 1024)
    bomb = header_bomb(3500)  # under 1 MiB on the wire, about 210 MiB once decompressed
    await refused(client, alice, bomb, "unpacks to more than 4194304 bytes (headers included)")


async def test_a_one_mib_pax_header(
    client: AsyncClient, alice: conftest.TestUser, tune_settings: Callable[..., None]
) -> None:
    tune_settings(max_artifact_bytes=4 * 1024 * 1024)
    archive = with_main(raw_header("././@PaxHeader", tarfile.XHDTYPE, pax_record("comment", "p" * 2**20)))
    await refused(client, alice, archive, "extended (pax or GNU long name) header of", "limit is 65536 bytes")


@pytest.mark.parametrize(
    ("links", "fragments"),
    [
        (
            [special("a.py", tarfile.SYMTYPE, "b.py"), special("b.py", tarfile.SYMTYPE, "a.py")],
            ["'a.py'", "not a regular file of the archive"],
        ),
        ([special("lib/passwd", tarfile.SYMTYPE, "../../etc/passwd")], ["'lib/passwd'", "pointing outside"]),
        (
            [special("early.py", tarfile.LNKTYPE, "late.py"), ("late.py", b"")],
            ["'early.py'", "not a regular file earlier in the archive"],
        ),
    ],
    ids=["symlink-cycle", "symlink-escape", "hardlink-to-later-member"],
)
async def test_unsafe_links(
    client: AsyncClient, alice: conftest.TestUser, links: list[tarfile.TarInfo], fragments: list[str]
) -> None:
    await refused(client, alice, tar_of(MAIN, *links, gzip=True), *fragments)
