"""Pick the storage backend from `GATEWAY_STORAGE_URL` and check it before the gateway starts."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..config import Settings
from .base import Storage, StorageError, StorageUnavailable
from .local import LocalStorage

logger = logging.getLogger(__name__)


async def open_storage(settings: Settings) -> Storage:
    """Build the configured backend; raises StorageUnavailable (one clear line) when it cannot be used."""
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"GATEWAY_STORAGE_URL {url!r}: a file:// URL names a local path (file:///path)")
        local = LocalStorage(Path(unquote(parsed.path)))
        await local.check()
        removed = await local.remove_stale_temp_files()
        if removed:
            logger.info("removed %d stale temp files from %s", removed, local.root)
        return local
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not bucket:
            raise StorageError(f"GATEWAY_STORAGE_URL {url!r}: name a bucket (s3://bucket/prefix)")
        from .s3 import S3Storage  # aioboto3 is slow to import: only when S3 is used

        s3 = await S3Storage.open(
            bucket=bucket,
            prefix=unquote(parsed.path),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            part_size=settings.s3_part_size,
            parts_in_flight=settings.s3_parts_in_flight,
        )
        try:
            await s3.check()
        except BaseException:
            await s3.close()
            raise
        try:
            aborted = await s3.abort_stale_uploads()
        except StorageError as exc:
            logger.warning("could not clean up stale multipart uploads: %s", exc)
        else:
            if aborted:
                logger.info("aborted %d stale multipart uploads in %s", aborted, s3.bucket)
        return s3
    raise StorageUnavailable(f"GATEWAY_STORAGE_URL {url!r}: unsupported scheme (use file:// or s3://)")
