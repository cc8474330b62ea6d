"""One behaviour suite, run against the local directory and against S3 (moto's server over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serverless_gateway.storage import InvalidKey, ObjectNotFound, ObjectTooLarge

from .conftest import Backend, Payload, sha256_of

MIB = 1024 * 1024


async def test_small_round_trip(backend: Backend) -> None:
    storage = backend.storage
    await storage.put_bytes("notes/hello.txt", b"hello world")

    assert await storage.get_bytes("notes/hello.txt") == b"hello world"
    assert b"".join([c async for c in storage.open_stream("notes/hello.txt", chunk_size=4)]) == b"hello world"
    info = await storage.stat("notes/hello.txt")
    assert info is not None
    assert (info.key, info.size) == ("notes/hello.txt", 11)
    assert info.modified is not None
    assert await storage.exists("notes/hello.txt")


async def test_put_stream_returns_size_and_empty_object_round_trips(backend: Backend) -> None:
    storage = backend.storage
    assert await storage.put_stream("a.bin", Payload(3000, chunk=1000).stream()) == 3000

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    assert await storage.put_stream("empty", nothing()) == 0
    assert await storage.get_bytes("empty") == b""
    assert [chunk async for chunk in storage.open_stream("empty")] == []
    info = await storage.stat("empty")
    assert info is not None
    assert info.size == 0


async def test_multipart_sized_round_trip(backend: Backend) -> None:
    payload = Payload(20 * MIB + 12345)
    storage = backend.storage

    assert await storage.put_stream("big/blob.bin", payload.stream(), max_bytes=payload.size) == payload.size

    digest, size = await sha256_of(storage.open_stream("big/blob.bin", chunk_size=MIB), max_chunk=MIB)
    assert (digest, size) == (payload.sha256, payload.size)
    info = await storage.stat("big/blob.bin")
    assert info is not None
    assert info.size == payload.size
    assert await backend.leftovers() == []


async def test_overwrite_replaces_the_object(backend: Backend) -> None:
    await backend.storage.put_bytes("k", b"first version")
    await backend.storage.put_bytes("k", b"second")
    assert await backend.storage.get_bytes("k") == b"second"


async def test_list_nested_keys_relative_to_the_prefix(backend: Backend) -> None:
    storage = backend.storage
    for key in ["a/b.txt", "a/c/d.txt", "a/c/e/f.txt", "ab/x.txt", "z.txt"]:
        await storage.put_bytes(key, key.encode())

    listed = await storage.list("a/")
    assert [info.key for info in listed] == ["b.txt", "c/d.txt", "c/e/f.txt"]
    assert [info.size for info in listed] == [len("a/b.txt"), len("a/c/d.txt"), len("a/c/e/f.txt")]
    assert [info.key for info in await storage.list("a")] == ["b.txt", "c/d.txt", "c/e/f.txt"]
    assert [info.key for info in await storage.list("a/c/")] == ["d.txt", "e/f.txt"]
    assert [info.key for info in await storage.list("")] == ["a/b.txt", "a/c/d.txt", "a/c/e/f.txt", "ab/x.txt", "z.txt"]
    assert await storage.list("nothing-here/") == []


async def test_delete_answers_whether_something_was_removed(backend: Backend) -> None:
    storage = backend.storage
    await storage.put_bytes("dir/gone.txt", b"x")

    assert await storage.delete("dir/gone.txt") is True
    assert await storage.delete("dir/gone.txt") is False
    assert await storage.delete("never/was.txt") is False
    assert not await storage.exists("dir/gone.txt")
    assert await storage.list("dir/") == []


async def test_missing_objects(backend: Backend) -> None:
    storage = backend.storage
    assert await storage.stat("no/such.txt") is None
    assert not await storage.exists("no/such.txt")
    with pytest.raises(ObjectNotFound):
        await storage.get_bytes("no/such.txt")
    stream = storage.open_stream("no/such.txt")  # creating the iterator does not touch the backend
    with pytest.raises(ObjectNotFound):
        await anext(stream)


async def test_too_large_small_body_leaves_nothing(backend: Backend) -> None:
    payload = Payload(5000, chunk=1000)
    with pytest.raises(ObjectTooLarge):
        await backend.storage.put_stream("small.bin", payload.stream(), max_bytes=4999)
    assert payload.sent <= 5000
    assert not await backend.storage.exists("small.bin")
    assert await backend.leftovers() == []


async def test_too_large_after_parts_were_sent_leaves_nothing(backend: Backend) -> None:
    payload = Payload(40 * MIB)
    with pytest.raises(ObjectTooLarge):
        await backend.storage.put_stream("large.bin", payload.stream(), max_bytes=12 * MIB)
    # The stream is abandoned as soon as it passes the limit: the rest is never read.
    assert payload.sent < 12 * MIB + 2 * MIB
    assert not await backend.storage.exists("large.bin")
    assert await backend.storage.list("") == []
    assert await backend.leftovers() == []


async def test_exactly_max_bytes_is_accepted(backend: Backend) -> None:
    payload = Payload(6 * MIB)
    assert await backend.storage.put_stream("exact.bin", payload.stream(), max_bytes=6 * MIB) == 6 * MIB
    assert (await sha256_of(backend.storage.open_stream("exact.bin")))[0] == payload.sha256


async def test_failing_stream_keeps_the_previous_object(backend: Backend) -> None:
    storage = backend.storage
    await storage.put_bytes("report.txt", b"old and complete")

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in Payload(11 * MIB).stream():
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.put_stream("report.txt", broken())
    assert await storage.get_bytes("report.txt") == b"old and complete"
    assert await backend.leftovers() == []


async def test_cancelled_upload_leaves_nothing(backend: Backend) -> None:
    reached = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in Payload(11 * MIB).stream():
            yield chunk
        reached.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(backend.storage.put_stream("cancelled.bin", stalls()))
    await asyncio.wait_for(reached.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await backend.storage.exists("cancelled.bin")
    assert await backend.leftovers() == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/", ".tmp/x", "nul\x00byte", "x" * 300])
async def test_invalid_keys_are_refused(backend: Backend, key: str) -> None:
    storage = backend.storage
    with pytest.raises(InvalidKey):
        await storage.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        await storage.stat(key)
    with pytest.raises(InvalidKey):
        await storage.get_bytes(key)
    with pytest.raises(InvalidKey):
        await storage.delete(key)


async def test_listing_rejects_climbing_prefixes(backend: Backend) -> None:
    with pytest.raises(InvalidKey):
        await backend.storage.list("../")


async def test_check_passes_on_a_healthy_backend(backend: Backend) -> None:
    await backend.storage.check()


async def test_open_stream_from_a_byte_offset(backend: Backend) -> None:
    storage = backend.storage
    await storage.put_bytes("ranged.txt", b"0123456789")
    assert b"".join([c async for c in storage.open_stream("ranged.txt", start=3, chunk_size=4)]) == b"3456789"
    assert b"".join([c async for c in storage.open_stream("ranged.txt", start=0)]) == b"0123456789"
    assert [c async for c in storage.open_stream("ranged.txt", start=10)] == []
    assert [c async for c in storage.open_stream("ranged.txt", start=99)] == []
    with pytest.raises(ObjectNotFound):
        _ = [c async for c in storage.open_stream("no/such.txt", start=5)]
