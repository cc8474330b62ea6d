"""Object storage behind one small async interface: a local directory or S3."""

from .base import ObjectInfo, Storage, StorageError, StorageUnavailable
from .factory import open_storage

__all__ = ["ObjectInfo", "Storage", "StorageError", "StorageUnavailable", "open_storage"]
