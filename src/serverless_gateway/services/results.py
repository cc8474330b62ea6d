"""Where a job's result lives: small results inline in `job.result`, larger ones in storage at `results/<id>.json`."""

from __future__ import annotations

from ..models import Job
from ..storage.base import ObjectNotFound, Storage

RESULT_INLINE_MAX_BYTES = 256 * 1024
"""Results up to this size (UTF-8) stay in the database row; larger ones go to storage."""


def result_key(job: Job) -> str:
    return f"results/{job.id}.json"


async def store_result(storage: Storage, job: Job, text: str) -> None:
    """Save `text` as the job's result (the caller flushes); a previous stored copy is replaced or removed."""
    data = text.encode("utf-8")
    if len(data) <= RESULT_INLINE_MAX_BYTES:
        previous = job.result_key
        job.result, job.result_key = text, None
        if previous is not None:
            await storage.delete(previous)
        return
    key = result_key(job)
    await storage.put_bytes(key, data)
    job.result, job.result_key = None, key


async def load_result(storage: Storage, job: Job) -> str | None:
    """The job's result text (loaded with `job.result`), wherever it lives; None when there is none."""
    if job.result_key is None:
        return job.result
    try:
        return (await storage.get_bytes(job.result_key)).decode("utf-8")
    except ObjectNotFound:
        return None
