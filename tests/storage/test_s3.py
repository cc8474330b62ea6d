"""What only the S3 backend does: multipart uploads, outages of the endpoint, the bucket check at start."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from serverless_gateway.config import Settings
from serverless_gateway.storage import ObjectNotFound, ObjectTooLarge, StorageError, StorageUnavailable, open_storage
from serverless_gateway.storage.s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Storage, part_size_for

from .conftest import REGION, TEST_PART_SIZE, Payload, free_port, sha256_of, start_moto

MIB = 1024 * 1024


async def open_s3(endpoint: str, bucket: str, *, prefix: str | None = None, **options: Any) -> S3Storage:
    options.setdefault("part_size", TEST_PART_SIZE)
    prefix = prefix or f"t-{uuid.uuid4().hex}"
    return await S3Storage.open(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region=REGION, **options)


@pytest.fixture
async def s3(moto_endpoint: str, s3_bucket: str) -> AsyncIterator[S3Storage]:
    storage = await open_s3(moto_endpoint, s3_bucket)
    yield storage
    await storage.close()


async def test_large_bodies_go_up_in_parts_small_ones_in_one_put(s3: S3Storage, raw_s3: Any) -> None:
    await s3.put_stream("big.bin", Payload(20 * MIB + 1, chunk=MIB).stream())
    await s3.put_stream("small.bin", Payload(MIB).stream())

    big = await raw_s3.head_object(Bucket=s3.bucket, Key=s3.prefix + "big.bin")
    small = await raw_s3.head_object(Bucket=s3.bucket, Key=s3.prefix + "small.bin")
    assert big["ETag"].strip('"').endswith("-5")  # four 5 MiB parts and the last byte
    assert "-" not in small["ETag"]


async def test_objects_live_under_the_configured_prefix(s3: S3Storage, raw_s3: Any) -> None:
    await s3.put_bytes("a/b.txt", b"x")
    listing = await raw_s3.list_objects_v2(Bucket=s3.bucket, Prefix=s3.prefix)
    assert [item["Key"] for item in listing["Contents"]] == [s3.prefix + "a/b.txt"]


async def test_folder_markers_of_other_tools_are_not_listed(s3: S3Storage, raw_s3: Any) -> None:
    await raw_s3.put_object(Bucket=s3.bucket, Key=s3.prefix + "dir/", Body=b"")
    await s3.put_bytes("dir/file.txt", b"x")
    assert [info.key for info in await s3.list("dir/")] == ["file.txt"]
    assert [info.key for info in await s3.list("")] == ["dir/file.txt"]


def test_part_size_grows_so_that_ten_thousand_parts_hold_a_large_object() -> None:
    assert part_size_for(1, DEFAULT_PART_SIZE) == DEFAULT_PART_SIZE
    assert part_size_for(1000, DEFAULT_PART_SIZE) == DEFAULT_PART_SIZE
    assert part_size_for(1001, DEFAULT_PART_SIZE) == 2 * DEFAULT_PART_SIZE
    total = sum(part_size_for(n, DEFAULT_PART_SIZE) for n in range(1, 10_001))
    assert total > 400 * 1024**3


async def test_part_size_below_the_s3_minimum_is_refused(moto_endpoint: str, s3_bucket: str) -> None:
    with pytest.raises(StorageError, match="part size"):
        await open_s3(moto_endpoint, s3_bucket, part_size=MIN_PART_SIZE - 1)


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def assert_every_operation_unavailable(storage: S3Storage) -> None:
    with pytest.raises(StorageUnavailable, match="127.0.0.1"):
        await storage.check()
    with pytest.raises(StorageUnavailable):
        await storage.put_bytes("k", b"x")
    with pytest.raises(StorageUnavailable):
        await storage.put_stream("k", Payload(7 * MIB).stream())
    with pytest.raises(StorageUnavailable):
        await storage.get_bytes("k")
    with pytest.raises(StorageUnavailable):
        await anext(storage.open_stream("k"))
    with pytest.raises(StorageUnavailable):
        await storage.stat("k")
    with pytest.raises(StorageUnavailable):
        await storage.exists("k")
    with pytest.raises(StorageUnavailable):
        await storage.list("")
    with pytest.raises(StorageUnavailable):
        await storage.delete("k")


async def test_endpoint_down_every_operation_is_unavailable(s3_bucket: str) -> None:
    storage = await open_s3(closed_endpoint(), s3_bucket, max_attempts=2, connect_timeout=1)
    try:
        started = time.monotonic()
        await assert_every_operation_unavailable(storage)
        assert time.monotonic() - started < 60
    finally:
        await storage.close()


async def test_endpoint_that_goes_away_later_is_unavailable(s3_bucket: str) -> None:
    server, endpoint = start_moto()
    storage = await open_s3(endpoint, s3_bucket, max_attempts=2, connect_timeout=1)
    try:
        await storage.check()
        await storage.put_bytes("k", b"x")
        await asyncio.to_thread(server.stop)
        await assert_every_operation_unavailable(storage)
    finally:
        await storage.close()


async def test_outage_during_a_multipart_upload_leaves_no_object(s3_bucket: str, moto_endpoint: str) -> None:
    """The endpoint dies after two parts: the upload fails as unavailable and the key never appears.

    moto keeps its state per process, so the session's server still shows what the dead one stored.
    """
    server, endpoint = start_moto()
    storage = await open_s3(endpoint, s3_bucket, max_attempts=2, connect_timeout=1)
    stopped = False
    try:
        reached = 0

        async def stream() -> AsyncIterator[bytes]:
            nonlocal reached, stopped
            async for chunk in Payload(30 * MIB).stream():
                reached += len(chunk)
                if reached > 12 * MIB and not stopped:
                    await asyncio.to_thread(server.stop)
                    stopped = True
                yield chunk

        with pytest.raises(StorageUnavailable):
            await storage.put_stream("interrupted.bin", stream())
        assert stopped
    finally:
        await storage.close()

    witness = await open_s3(moto_endpoint, s3_bucket, prefix=storage.prefix)
    try:
        assert await witness.list("") == []
        # The abort could not reach the dead endpoint: the parts wait for the stale-upload sweep.
        assert await witness.abort_stale_uploads(older_than=timedelta(0)) == 1
        assert await witness.abort_stale_uploads(older_than=timedelta(0)) == 0
    finally:
        await witness.close()


async def test_missing_bucket_stops_start_up_with_a_clear_line(moto_endpoint: str, s3_bucket: str) -> None:
    settings = Settings(storage_url="s3://no-such-bucket/gw", s3_endpoint_url=moto_endpoint, s3_region=REGION)
    with pytest.raises(StorageUnavailable) as caught:
        await open_storage(settings)
    message = str(caught.value)
    assert "no-such-bucket" in message
    assert "does not exist" in message
    assert moto_endpoint in message
    assert "\n" not in message


async def test_missing_credentials_stop_start_up_with_a_clear_line(
    moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    settings = Settings(storage_url=f"s3://{s3_bucket}/gw", s3_endpoint_url=moto_endpoint, s3_region=REGION)
    with pytest.raises(StorageUnavailable, match="credentials"):
        await open_storage(settings)


async def test_factory_builds_s3_storage_from_settings(moto_endpoint: str, s3_bucket: str) -> None:
    settings = Settings(storage_url=f"s3://{s3_bucket}/some/prefix/", s3_endpoint_url=moto_endpoint, s3_region=REGION)
    storage = await open_storage(settings)
    try:
        assert isinstance(storage, S3Storage)
        assert (storage.bucket, storage.prefix) == (s3_bucket, "some/prefix/")
        await storage.put_bytes("x.txt", b"x")
        assert await storage.get_bytes("x.txt") == b"x"
        assert await storage.delete("x.txt")
    finally:
        await storage.close()


async def test_factory_refuses_an_s3_url_without_bucket() -> None:
    with pytest.raises(StorageError, match="bucket"):
        await open_storage(Settings(storage_url="s3:///prefix"))


@pytest.mark.parametrize(
    ("code", "status", "key", "expected"),
    [
        ("NoSuchKey", 404, "k", ObjectNotFound),
        ("404", 404, "k", ObjectNotFound),
        ("404", 404, None, StorageUnavailable),  # head_bucket: the bucket is missing
        ("NoSuchBucket", 404, "k", StorageUnavailable),
        ("AccessDenied", 403, "k", StorageUnavailable),
        ("InvalidAccessKeyId", 403, None, StorageUnavailable),
        ("SignatureDoesNotMatch", 403, None, StorageUnavailable),
        ("SlowDown", 503, "k", StorageUnavailable),
        ("InternalError", 500, "k", StorageUnavailable),
        ("EntityTooLarge", 400, "k", ObjectTooLarge),
        ("InvalidArgument", 400, "k", StorageError),
    ],
)
async def test_s3_error_codes_map_to_storage_errors(
    s3: S3Storage, code: str, status: int, key: str | None, expected: type[StorageError]
) -> None:
    error = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")
    mapped = s3._client_error(error, "op", key)
    assert type(mapped) is expected
    if expected is StorageUnavailable:
        assert s3.bucket in str(mapped)


async def test_several_parts_in_flight_keep_the_order(moto_endpoint: str, s3_bucket: str, raw_s3: Any) -> None:
    storage = await open_s3(moto_endpoint, s3_bucket, parts_in_flight=3)
    try:
        payload = Payload(26 * MIB + 3, chunk=MIB)
        assert await storage.put_stream("many.bin", payload.stream()) == payload.size
        assert await sha256_of(storage.open_stream("many.bin")) == (payload.sha256, payload.size)
        head = await raw_s3.head_object(Bucket=s3_bucket, Key=storage.prefix + "many.bin")
        assert head["ETag"].strip('"').endswith("-6")

        with pytest.raises(ObjectTooLarge):
            await storage.put_stream("too-big.bin", Payload(40 * MIB).stream(), max_bytes=21 * MIB)
        uploads = await raw_s3.list_multipart_uploads(Bucket=s3_bucket, Prefix=storage.prefix)
        assert uploads.get("Uploads", []) == []
        assert [info.key for info in await storage.list("")] == ["many.bin"]
    finally:
        await storage.close()


async def test_factory_takes_part_size_and_parts_in_flight_from_settings(moto_endpoint: str, s3_bucket: str) -> None:
    settings = Settings(
        storage_url=f"s3://{s3_bucket}/p",
        s3_endpoint_url=moto_endpoint,
        s3_region=REGION,
        s3_part_size=6 * MIB,
        s3_parts_in_flight=2,
    )
    storage = await open_storage(settings)
    try:
        assert isinstance(storage, S3Storage)
        assert (storage.part_size, storage.parts_in_flight) == (6 * MIB, 2)
    finally:
        await storage.close()
