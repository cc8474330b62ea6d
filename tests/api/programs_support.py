"""Helpers shared by the programs API tests: providers, groups, grants, odd tar archives, settings overrides."""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.services import accounts
from serverless_gateway.services import programs as program_service
from tests.conftest import TestUser

UPLOAD = "/api/v1/programs/upload/"
RUN = "/api/v1/programs/run/"
VALIDATE = "/api/v1/programs/validate_arguments/"


async def make_provider(app: FastAPI, name: str, *admins: TestUser) -> None:
    """A provider whose admin group holds `admins`."""
    group = f"{name}-admins"
    async with app.state.gateway.sessionmaker.begin() as session:
        await accounts.create_group(session, name=group)
        for admin in admins:
            await accounts.add_user_to_group(session, username=admin.name, group_name=group)
        await accounts.create_provider(session, name=name, admin_group=group)


async def grant(app: FastAPI, *, title: str, provider: str, user: TestUser, level: str) -> None:
    """Put `user` in a fresh group and grant that group `level` on the provider's program."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    async with app.state.gateway.sessionmaker.begin() as session:
        await accounts.create_group(session, name=group)
        await accounts.add_user_to_group(session, username=user.name, group_name=group)
        await program_service.grant_program(session, title=title, provider=provider, group=group, level=level)


@pytest.fixture
def tune_settings(app: FastAPI) -> Iterator[Callable[..., None]]:
    """Call it with setting overrides for this test; the app's settings come back afterwards."""
    state = app.state.gateway
    original = state.settings

    def tune(**changes: Any) -> None:
        state.settings = original.model_copy(update=changes)

    yield tune
    state.settings = original


def tar_of(*members: tarfile.TarInfo | tuple[str, bytes], gzip: bool = False) -> bytes:
    """A tar whose members are given as (name, content) files or ready TarInfo headers (no data)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


MAIN = ("main.py", b"print('hi')\n")


async def post_upload(client: AsyncClient, user: TestUser, archive: bytes | None, **fields: Any) -> Any:
    data = {"title": "prog", "entrypoint": "main.py", **fields}
    data = {key: value for key, value in data.items() if value is not None}
    files = {"artifact": ("artifact.tar", archive, "application/x-tar")} if archive is not None else None
    return await client.post(UPLOAD, headers=user.headers, data=data, files=files)
