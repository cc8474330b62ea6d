"""SpaceUsage: a file space's bytes, listed at most once per TTL, with uploads in flight holding their share."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serverless_gateway.storage.local import LocalStorage
from serverless_gateway.storage.usage import SpaceUsage


async def test_reservations_share_the_quota_and_settle(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    await storage.check()
    await storage.put_bytes("space/f/one", b"x" * 300)
    usage = SpaceUsage(ttl_seconds=3600)

    assert await usage.reserve(storage, "space/", quota=1000, freed=0, upto=500) == (500, 300)
    assert await usage.reserve(storage, "space/", quota=1000, freed=0, upto=500) == (200, 800)
    assert await usage.reserve(storage, "space/", quota=1000, freed=0, upto=500) == (0, 1000)
    # Replacing the 300-byte file frees its bytes for that upload only.
    assert await usage.reserve(storage, "space/", quota=1000, freed=300, upto=500) == (300, 700)
    usage.settle("space/", held=300, stored=None, freed=300)  # it failed: nothing changes
    usage.settle("space/", held=500, stored=120, freed=0)
    usage.settle("space/", held=200, stored=None, freed=0)
    assert await usage.reserve(storage, "space/", quota=1000, freed=0, upto=1000) == (580, 420)


async def test_other_writers_show_after_the_ttl_or_a_change(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    await storage.check()
    usage = SpaceUsage(ttl_seconds=0.2)
    assert await usage.reserve(storage, "space/", quota=100, freed=0, upto=10) == (10, 0)
    await storage.put_bytes("space/behind/the/back", b"x" * 50)
    assert await usage.reserve(storage, "space/", quota=100, freed=0, upto=10) == (10, 10)  # cached listing
    await asyncio.sleep(0.25)
    held, used = await usage.reserve(storage, "space/", quota=100, freed=0, upto=100)
    assert (held, used) == (30, 70)  # listed again; the two reservations in flight are kept
    await storage.delete("space/behind/the/back")
    usage.changed("space/")
    assert await usage.reserve(storage, "space/", quota=100, freed=0, upto=100) == (50, 50)


async def test_many_spaces_do_not_grow_without_bound(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    await storage.check()
    usage = SpaceUsage(ttl_seconds=3600, max_spaces=3)
    for n in range(10):
        held, _ = await usage.reserve(storage, f"s{n}/", quota=10, freed=0, upto=1)
        usage.settle(f"s{n}/", held=held, stored=1, freed=0)
    assert len(usage._spaces) <= 3
