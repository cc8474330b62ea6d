"""What only the local backend does: temp files, fsync'd atomic renames, the directory check at start."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from serverless_gateway.config import Settings
from serverless_gateway.storage import StorageError, StorageUnavailable, open_storage
from serverless_gateway.storage.local import LocalStorage

from .conftest import Payload, sha256_of

MIB = 1024 * 1024


@pytest.fixture
async def local(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "store")
    await storage.check()
    return storage


async def test_in_progress_upload_is_invisible_until_complete(local: LocalStorage) -> None:
    seen_during_upload: list[bool] = []

    async def watched() -> AsyncIterator[bytes]:
        async for chunk in Payload(3 * MIB).stream():
            seen_during_upload.append(await local.exists("file.bin"))
            yield chunk

    await local.put_stream("file.bin", watched())
    assert seen_during_upload
    assert not any(seen_during_upload)
    assert await local.exists("file.bin")
    # The temp directory is never listed as objects.
    assert [info.key for info in await local.list("")] == ["file.bin"]


async def test_temp_files_of_a_crashed_process_are_swept(local: LocalStorage) -> None:
    tmp_dir = local.root / ".tmp"
    old = tmp_dir / "left-by-a-crash"
    old.write_bytes(b"partial")
    fresh = tmp_dir / "upload-in-progress"
    fresh.write_bytes(b"partial")
    a_day_ago = time.time() - 25 * 3600
    os.utime(old, (a_day_ago, a_day_ago))

    assert await local.remove_stale_temp_files() == 1
    assert not old.exists()
    assert fresh.exists()


async def test_key_under_an_existing_object_is_a_storage_error(local: LocalStorage) -> None:
    await local.put_bytes("a", b"file")
    with pytest.raises(StorageError):
        await local.put_bytes("a/b", b"nested")
    assert await local.get_bytes("a") == b"file"
    assert list((local.root / ".tmp").iterdir()) == []


async def test_memory_stays_flat_while_streaming_64_mib(local: LocalStorage) -> None:
    payload = Payload(64 * MIB, chunk=256 * 1024)
    tracemalloc.start()
    try:
        await local.put_stream("big.bin", payload.stream())
        digest, size = await sha256_of(local.open_stream("big.bin"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (digest, size) == (payload.sha256, payload.size)
    assert peak < 8 * MIB


async def test_factory_builds_local_storage_from_settings(tmp_path: Path) -> None:
    storage = await open_storage(Settings(data_dir=tmp_path / "data"))
    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "data" / "storage").resolve()
    assert storage.root.is_dir()

    explicit = await open_storage(Settings(storage_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(explicit, LocalStorage)
    assert explicit.root == (tmp_path / "elsewhere").resolve()


async def test_unusable_directory_stops_start_up_with_a_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageUnavailable, match="storage directory"):
        await open_storage(Settings(storage_url=f"file://{blocker}/store"))


async def test_file_url_with_a_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="local path"):
        await open_storage(Settings(storage_url="file://server/share"))
