"""Object storage behind one small async interface: a local directory or S3."""

from .base import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    StorageUnavailable,
)
from .factory import open_storage

__all__ = [
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectTooLarge",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "open_storage",
]
