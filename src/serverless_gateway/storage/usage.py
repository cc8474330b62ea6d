"""Bytes used under a storage prefix (a file space), listed at most once a minute and kept current in between.

Uploads reserve their share of the quota before they stream, so concurrent uploads in one process can never
pass it together; other processes' changes (and a job's own writes) show at the next listing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .base import Storage

USAGE_TTL_SECONDS = 60.0
MAX_SPACES = 10_000


@dataclass
class _Space:
    listed_at: float
    used: int
    reserved: int = 0


class SpaceUsage:
    """What each file space holds, and what the uploads in flight have reserved of it."""

    def __init__(self, ttl_seconds: float = USAGE_TTL_SECONDS, max_spaces: int = MAX_SPACES):
        self._ttl = ttl_seconds
        self._max = max_spaces
        self._spaces: dict[str, _Space] = {}

    async def _space(self, storage: Storage, prefix: str) -> _Space:
        entry = self._spaces.get(prefix)
        if entry is not None and time.monotonic() - entry.listed_at < self._ttl:
            return entry
        used = sum(info.size for info in await storage.list(prefix))
        current = self._spaces.get(prefix)  # another upload may have reserved while we listed
        if current is None and len(self._spaces) >= self._max:
            self._spaces = {key: space for key, space in self._spaces.items() if space.reserved}
        entry = _Space(listed_at=time.monotonic(), used=used, reserved=current.reserved if current else 0)
        self._spaces[prefix] = entry
        return entry

    async def reserve(self, storage: Storage, prefix: str, *, quota: int, freed: int, upto: int) -> tuple[int, int]:
        """Hold up to `upto` bytes of the quota for one upload replacing a file of `freed` bytes (0: a new file).

        Returns (bytes held, bytes the space uses or has reserved besides); nothing is held when nothing is left.
        """
        entry = await self._space(storage, prefix)
        others = entry.used + entry.reserved - freed
        held = max(0, min(upto, quota - others))
        entry.reserved += held
        return held, others

    def settle(self, prefix: str, *, held: int, stored: int | None, freed: int) -> None:
        """The upload ended: give back what it held and count what it `stored` (None: it failed, nothing changed)."""
        entry = self._spaces.get(prefix)
        if entry is None:
            return
        entry.reserved = max(0, entry.reserved - held)
        if stored is not None:
            entry.used += stored - freed

    def changed(self, prefix: str) -> None:
        """Something under `prefix` changed in a way not counted here (a delete): list it again next time."""
        entry = self._spaces.get(prefix)
        if entry is not None:
            entry.listed_at = float("-inf")
