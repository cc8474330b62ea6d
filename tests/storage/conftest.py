"""Fixtures for the storage suite: one moto S3 server over HTTP for the session, and both backends per test."""

from __future__ import annotations

import hashlib
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aioboto3
import pytest
from moto.server import ThreadedMotoServer

from serverless_gateway.storage.base import Storage
from serverless_gateway.storage.local import LocalStorage
from serverless_gateway.storage.s3 import MIN_PART_SIZE, S3Storage

BUCKET = "gateway-test"
REGION = "us-east-1"
# The smallest part S3 (and moto) accept, so a 20 MiB object is sent in four parts.
TEST_PART_SIZE = MIN_PART_SIZE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[ThreadedMotoServer, str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _clean_database() -> None:
    """The storage suite needs no database: this replaces the root conftest's table cleaner."""


@pytest.fixture(scope="session", autouse=True)
def aws_env() -> Iterator[None]:
    """Dummy credentials for moto, and never the instance metadata service."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port: the code under test talks HTTP to it."""
    server, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def s3_bucket(moto_endpoint: str) -> str:
    async with aioboto3.Session().client("s3", endpoint_url=moto_endpoint, region_name=REGION) as client:
        await client.create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
async def raw_s3(moto_endpoint: str) -> AsyncIterator[object]:
    """A plain aioboto3 client for looking behind the backend's back."""
    async with aioboto3.Session().client("s3", endpoint_url=moto_endpoint, region_name=REGION) as client:
        yield client


@dataclass
class Backend:
    name: str
    storage: Storage
    leftovers: Callable[[], Awaitable[list[str]]]
    """Half-written state the backend keeps out of sight (temp files, pending multipart uploads)."""


@pytest.fixture(params=["local", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> AsyncIterator[Backend]:
    if request.param == "local":
        local = LocalStorage(tmp_path / "store")
        await local.check()

        async def temp_files() -> list[str]:
            tmp_dir = local.root / ".tmp"
            return sorted(p.name for p in tmp_dir.iterdir()) if tmp_dir.is_dir() else []

        yield Backend("local", local, temp_files)
        await local.close()
        return

    s3 = await S3Storage.open(
        bucket=s3_bucket,
        prefix=f"t-{uuid.uuid4().hex}",
        endpoint_url=moto_endpoint,
        region=REGION,
        part_size=TEST_PART_SIZE,
    )

    async def pending_uploads() -> list[str]:
        client = s3._client
        listing = await client.list_multipart_uploads(Bucket=s3_bucket, Prefix=s3.prefix)
        return sorted(str(item["Key"]) for item in listing.get("Uploads", []))

    yield Backend("s3", s3, pending_uploads)
    await s3.close()


class Payload:
    """A deterministic pseudo-random byte stream of `size` bytes in `chunk`-sized pieces, with its sha256."""

    def __init__(self, size: int, *, chunk: int = 1024 * 1024 + 7, seed: int = 1):
        self.size = size
        self.chunk = chunk
        self.seed = seed
        self.sent = 0
        digest = hashlib.sha256()
        for piece in self._pieces():
            digest.update(piece)
        self.sha256 = digest.hexdigest()

    def _pieces(self) -> Iterator[bytes]:
        rng = random.Random(self.seed)
        left = self.size
        while left > 0:
            n = min(self.chunk, left)
            left -= n
            yield rng.randbytes(n)

    async def stream(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            self.sent += len(piece)
            yield piece


async def sha256_of(chunks: AsyncIterator[bytes], *, max_chunk: int | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        if max_chunk is not None:
            assert len(chunk) <= max_chunk
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
