"""A job's result: checked once when saved, kept as its JSON text, and served as that text without decoding it.

Small results live inline in `job.result`, larger ones in storage under `results/<job id>/<random>.json` (a
new object per save, so a save that rolls back never changes what the committed row points to; the object it
replaced is removed only after the commit, by the caller).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

from ..errors import BadRequest, PayloadTooLarge
from ..models import Job
from ..storage.base import ObjectNotFound, Storage, StorageError
from .json_check import JsonRefused, scan_json, with_nulls

logger = logging.getLogger(__name__)

RESULT_INLINE_MAX_BYTES = 256 * 1024
"""Results up to this size (UTF-8) stay in the database row; larger ones go to storage."""
MAX_JSON_DEPTH = 100
"""Deepest nesting of a result: far beyond real use, well within what JSON decoders accept."""
RESULT_CHUNK_BYTES = 256 * 1024
_CHECK_ON_LOOP_BYTES = 64 * 1024
MAX_CHECK_CONTAINERS = 2_000_000
"""Most arrays and objects one result may hold: bounds the time its check takes (a few seconds at most)."""
# One large result is checked at a time (per event loop), so concurrent saves cannot add up their memory.
_LARGE_CHECKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _too_deep() -> BadRequest:
    return BadRequest(f"Invalid request: result: nested more than {MAX_JSON_DEPTH} levels deep.")


def check_result_text(text: str) -> str:
    """The JSON text to store for `text` (NaN and infinities as null), or BadRequest; blocking, bounded memory."""
    try:
        found = scan_json(text, max_depth=MAX_JSON_DEPTH, max_containers=MAX_CHECK_CONTAINERS)
    except JsonRefused as exc:
        raise BadRequest(f"Invalid request: result: {exc.reason}.") from None
    return with_nulls(text, found.constants) if found.constants else text


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (walked without recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _encoded_value(value: Any) -> str:
    """A result the request body already decoded (a JSON value, not a string) as JSON text; blocking."""
    if nested_deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep()
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"Invalid request: result: not a JSON value ({exc}).") from None
    except RecursionError:
        raise _too_deep() from None
    return text


def _checked(value: Any, max_bytes: int) -> str:
    """`result_text` without the thread: size first (characters, then bytes), then the JSON check."""
    if isinstance(value, str):
        if len(value) > max_bytes:
            raise _too_large(max_bytes)
        if not value.isascii() and len(value.encode("utf-8", errors="surrogatepass")) > max_bytes:
            raise _too_large(max_bytes)
        return check_result_text(value)
    text = _encoded_value(value)
    if len(text) > max_bytes or len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise _too_large(max_bytes)
    return check_result_text(text)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The result is larger than the limit of {max_bytes} bytes.")


async def result_text(value: Any, *, max_bytes: int) -> str:
    """A result as sent (a JSON string, or the JSON value itself) as the checked JSON text to store.

    413 over `max_bytes` (checked first), 400 when it is not JSON or nests too deep. Anything but a small
    string is checked in a worker thread, one at a time.
    """
    if value is None:
        raise BadRequest("Invalid request: result: Field required (a JSON string).")
    if isinstance(value, str) and len(value) > max_bytes:
        raise _too_large(max_bytes)
    if isinstance(value, str) and len(value) <= _CHECK_ON_LOOP_BYTES:
        return _checked(value, max_bytes)
    lock = _LARGE_CHECKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        return await asyncio.to_thread(_checked, value, max_bytes)


def new_result_key(job: Job) -> str:
    return f"results/{job.id}/{uuid.uuid4().hex}.json"


async def store_result(storage: Storage, job: Job, text: str) -> str | None:
    """Save checked `text` as the job's result (the caller flushes and commits).

    Returns the storage key of the copy it replaced, which the caller deletes only after the commit (a
    rollback must leave the committed row pointing at an object that still exists), or None.
    """
    previous = job.result_key
    data = text.encode("utf-8")
    if len(data) <= RESULT_INLINE_MAX_BYTES:
        job.result, job.result_key = text, None
        return previous
    key = new_result_key(job)
    await storage.put_bytes(key, data)
    job.result, job.result_key = None, key
    return previous


async def remove_replaced(storage: Storage, key: str | None) -> None:
    """Delete a result object `store_result` replaced, once the replacement is committed (best effort)."""
    if key is None:
        return
    try:
        await storage.delete(key)
    except StorageError as exc:  # an orphan object, not a wrong answer
        logger.warning("could not delete the replaced result %s: %s", key, exc)


_REMOVALS: set[asyncio.Task[None]] = set()


def remove_after_commit(storage: Storage, key: str) -> None:
    """`remove_replaced` as a callback of `db.call_after_commit` (which runs synchronously after the commit)."""
    task = asyncio.get_running_loop().create_task(remove_replaced(storage, key))
    _REMOVALS.add(task)
    task.add_done_callback(_REMOVALS.discard)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _rest(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in chunks:
        yield chunk


async def open_result(storage: Storage, job: Job) -> AsyncIterator[bytes] | None:
    """The job's result text as UTF-8 chunks, to be sent as it is; None when there is none.

    A stored copy's first chunk is read here, so a missing object (or a storage outage) shows now, not in
    the middle of a response. Inline results saved before NaN was rewritten are rewritten as they are read.
    """
    if job.result_key is None:
        if job.result is None:
            return None
        text = job.result
        if "NaN" in text or "Infinity" in text:  # saved before they were rewritten at save: a small text
            text = _legacy_without_constants(text)
        return _one(text.encode("utf-8"))
    chunks = storage.open_stream(job.result_key, chunk_size=RESULT_CHUNK_BYTES)
    try:
        first = await anext(chunks)
    except (ObjectNotFound, StopAsyncIteration):
        return None
    return _rest(first, chunks)


async def load_result(storage: Storage, job: Job) -> str | None:
    """The job's result text at once (small results, tests); None when there is none."""
    chunks = await open_result(storage, job)
    if chunks is None:
        return None
    return b"".join([chunk async for chunk in chunks]).decode("utf-8")


def _legacy_without_constants(text: str) -> str:
    try:
        found = scan_json(text, max_depth=MAX_JSON_DEPTH * 10, max_containers=MAX_CHECK_CONTAINERS)
    except JsonRefused:
        return json.dumps(text)  # not JSON at all: shown as the string it is, as before
    return with_nulls(text, found.constants)
