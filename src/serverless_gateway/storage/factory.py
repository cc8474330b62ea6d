"""Pick the storage backend from `GATEWAY_STORAGE_URL`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..config import Settings
from .base import Storage, StorageError
from .local import LocalStorage


async def open_storage(settings: Settings) -> Storage:
    """Build the configured backend and check that it can be used."""
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        storage: Storage = LocalStorage(Path(unquote(parsed.path)))
    else:
        raise StorageError(f"unsupported storage URL {url!r}")
    await storage.check()
    return storage
