"""The launcher's DATA_PATH sync against a gateway on S3 (moto server mode), over real HTTP with a job token."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aioboto3
import httpx
import pytest

from serverless_gateway.config import Settings
from serverless_gateway.engine.launcher_data import DataSync, SyncError
from serverless_gateway.models import JobStatus
from tests.api.jobs_support import add_job_with_token, add_program
from tests.conftest import upload_program
from tests.engine.conftest import LiveGateway, engine_settings_for, run_job, serve_app, wait_status
from tests.storage.conftest import free_port, start_moto

if TYPE_CHECKING:
    from serverless_gateway.engine.local_ray import LocalRayHead
    from tests.conftest import TestUser

BUCKET = "gateway-sync"


@pytest.fixture(scope="module")
def aws_credentials() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="module")
async def moto_endpoint(aws_credentials: None) -> AsyncIterator[str]:
    moto, endpoint = start_moto()
    try:
        async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1") as client:
            await client.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        moto.stop()


def s3_settings(settings: Settings, endpoint: str, port: int, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "storage_url": f"s3://{BUCKET}/gw",
        "s3_endpoint_url": endpoint,
        "s3_region": "us-east-1",
        "data_dir": data_dir,
        "public_url": f"http://127.0.0.1:{port}",
        "run_engine": False,
        "max_upload_bytes": 8 * 1024 * 1024,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


@pytest.fixture(scope="module")
async def s3_gateway(
    settings: Settings, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveGateway]:
    """The app (no engine) on S3 storage, served by uvicorn: what a job's launcher talks to."""
    port = free_port()
    gateway = await serve_app(
        s3_settings(settings, moto_endpoint, port, tmp_path_factory.mktemp("sync-data")), port, start_engine=False
    )
    yield gateway
    await gateway.stop()


def job_sync(gateway: LiveGateway, token: str, function: str, data_path: Path) -> DataSync:
    return DataSync(host=gateway.url, token=token, function=function, provider="", data_path=str(data_path))


async def test_job_reads_uploaded_files_and_its_new_files_are_listed(
    s3_gateway: LiveGateway, make_user: object, tmp_path: Path
) -> None:
    from serverless_gateway.storage.s3 import S3Storage

    assert isinstance(s3_gateway.state.storage, S3Storage)
    alice: TestUser = await make_user("alice")  # type: ignore[operator]
    program = await add_program(s3_gateway.app, alice, "sync-me")
    _job_id, job_headers = await add_job_with_token(s3_gateway.app, alice, program)
    token = job_headers["Authorization"].removeprefix("Bearer ")
    files_url = f"{s3_gateway.url}/api/v1/files/"
    params = {"function": "sync-me"}
    big = os.urandom(3 * 1024 * 1024 + 5)
    async with httpx.AsyncClient(timeout=30) as http:
        for name, data in (("input.txt", b"from the user\n"), ("big.bin", big), ("données é.txt", b"accents")):
            uploaded = await http.post(
                f"{files_url}upload/", params=params, headers=alice.headers, files={"file": (name, data)}
            )
            assert uploaded.status_code == 200, uploaded.text

        data_path = tmp_path / "data"
        data_path.mkdir()
        sync = job_sync(s3_gateway, token, "sync-me", data_path)
        await asyncio.to_thread(sync.pull)
        assert (data_path / "input.txt").read_bytes() == b"from the user\n"
        assert (data_path / "big.bin").read_bytes() == big
        assert (data_path / "données é.txt").read_text() == "accents"
        assert sync.changed() == []

        # What the job does: reads a file, writes a new one, changes one, makes a sub-directory (not synced).
        (data_path / "output.txt").write_text((data_path / "input.txt").read_text().upper())
        (data_path / "big.bin").write_bytes(b"smaller now")
        (data_path / "nested").mkdir()
        (data_path / "nested" / "skip.txt").write_text("not a top-level file")
        assert sync.changed() == ["big.bin", "output.txt"]
        assert await asyncio.to_thread(sync.push) == 0

        listed = await http.get(files_url, params=params, headers=alice.headers)
        assert listed.status_code == 200
        assert listed.json()["files"] == sorted(["big.bin", "données é.txt", "input.txt", "output.txt"])
        for name, expected in (("output.txt", b"FROM THE USER\n"), ("big.bin", b"smaller now")):
            got = await http.get(f"{files_url}download/", params={**params, "file": name}, headers=alice.headers)
            assert got.status_code == 200
            assert got.content == expected
    objects = [info.key for info in await s3_gateway.state.storage.list("")]
    assert any(key.endswith("/output.txt") for key in objects)


async def test_job_token_cannot_sync_another_function(
    s3_gateway: LiveGateway, make_user: object, tmp_path: Path
) -> None:
    alice: TestUser = await make_user("alice")  # type: ignore[operator]
    mine = await add_program(s3_gateway.app, alice, "mine")
    await add_program(s3_gateway.app, alice, "other")
    _job_id, job_headers = await add_job_with_token(s3_gateway.app, alice, mine)
    token = job_headers["Authorization"].removeprefix("Bearer ")
    sync = job_sync(s3_gateway, token, "other", tmp_path)
    with pytest.raises(SyncError) as raised:
        await asyncio.to_thread(sync.pull)
    assert raised.value.status == 404
    (tmp_path / "leak.txt").write_text("no")
    assert await asyncio.to_thread(sync.push) == 1


def test_from_env_needs_the_sync_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENV_JOB_GATEWAY_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("ENV_JOB_GATEWAY_TOKEN", "t")
    monkeypatch.setenv("GATEWAY_DATA_FUNCTION", "f")
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    monkeypatch.setenv("GATEWAY_DATA_SYNC", "0")
    assert DataSync.from_env() is None
    monkeypatch.setenv("GATEWAY_DATA_SYNC", "1")
    sync = DataSync.from_env()
    assert sync is not None
    assert sync.data_path == str(tmp_path)


READ_AND_WRITE = """
import json, os
data = os.environ["DATA_PATH"]
text = open(os.path.join(data, "input.txt")).read()
with open(os.path.join(data, "written-by-job.txt"), "w") as out:
    out.write(text.upper())
with open(os.environ["RESULTS_PATH"], "w") as out:
    json.dump({"read": text}, out)
"""


async def test_ray_job_on_s3_reads_and_writes_data_path(
    settings: Settings,
    moto_endpoint: str,
    ray_head: LocalRayHead,
    tune_live: Callable[..., None],
    alice: TestUser,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A real job on Ray with an S3-backed gateway: DATA_PATH holds the function's files, new ones come back."""
    tune_live(max_running_jobs=0)  # the session's local-storage gateway shares the database: keep it from claiming
    port = free_port()
    assert ray_head.dashboard_url is not None
    engine = engine_settings_for(
        s3_settings(settings, moto_endpoint, port, tmp_path_factory.mktemp("s3-engine")),
        ray_address=ray_head.dashboard_url,
        port=port,
        data_dir=tmp_path_factory.mktemp("s3-engine-data"),
        storage_url=f"s3://{BUCKET}/engine",
        max_upload_bytes=8 * 1024 * 1024,
    )
    gateway = await serve_app(engine, port)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as gw:
            await upload_program(gw, alice, "data-sync", files={"main.py": READ_AND_WRITE})
            params = {"function": "data-sync"}
            sent = await gw.post(
                "/api/v1/files/upload/", params=params, headers=alice.headers, files={"file": ("input.txt", b"hi s3")}
            )
            assert sent.status_code == 200, sent.text
            job_id = await run_job(gw, alice, "data-sync")
            job = await wait_status(gateway.state, job_id, [JobStatus.SUCCEEDED], timeout=120)
            assert json.loads(job.result or "null") == {"read": "hi s3"}
            listed = await gw.get("/api/v1/files/", params=params, headers=alice.headers)
            assert listed.json()["files"] == ["input.txt", "written-by-job.txt"]
            got = await gw.get(
                "/api/v1/files/download/", params={**params, "file": "written-by-job.txt"}, headers=alice.headers
            )
            assert got.content == b"HI S3"
    finally:
        await gateway.stop()
