"""SQL for the `Idempotency-Key` of programs/run: claim a key atomically, attach its job, forget expired keys.

Written for the run's own asyncpg transaction (`db.DriverTransaction`), so the key and its job commit together.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from ..db import DriverTransaction

KEY_LIFETIME = timedelta(hours=24)
CLEANUP_BATCH = 100
_LIFETIME_SQL = "interval '24 hours'"


@dataclass(frozen=True, slots=True)
class EarlierRun:
    """What the first request with this key did: its body's hash, and its job with that job's status now."""

    body_sha256: str
    job_id: uuid.UUID | None
    status: str | None


_CLAIM = f"""
INSERT INTO run_idempotency_key (id, user_id, key, body_sha256) VALUES ($1, $2, $3, $4)
ON CONFLICT ON CONSTRAINT uq_run_idempotency_key_user_key DO UPDATE
    SET body_sha256 = EXCLUDED.body_sha256, job_id = NULL, created_at = now()
    WHERE run_idempotency_key.created_at < now() - {_LIFETIME_SQL}
RETURNING id
"""
_EARLIER = """
SELECT k.body_sha256, k.job_id, j.status FROM run_idempotency_key k LEFT JOIN job j ON j.id = k.job_id
WHERE k.user_id = $1 AND k.key = $2
"""
_ATTACH = "UPDATE run_idempotency_key SET job_id = $3 WHERE user_id = $1 AND key = $2"
_FORGET = f"""
DELETE FROM run_idempotency_key WHERE id IN (
    SELECT id FROM run_idempotency_key WHERE created_at < now() - {_LIFETIME_SQL}
    LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED
)
"""


async def claim_key(
    transaction: DriverTransaction, *, user_id: uuid.UUID, key: str, body_sha256: str
) -> EarlierRun | None:
    """Take `key` for this request (None), or return the earlier run that holds it.

    One INSERT ... ON CONFLICT: a concurrent request with the same key waits for this transaction, then sees its
    job; an expired key is taken over in the same statement. On rollback the key is free again.
    """
    connection = await transaction.connection()
    if await connection.fetchval(_CLAIM, uuid.uuid4(), user_id, key, body_sha256) is not None:
        return None
    row = await connection.fetchrow(_EARLIER, user_id, key)
    assert row is not None  # the conflicting row is there: the INSERT waited for it
    return EarlierRun(body_sha256=row[0], job_id=row[1], status=row[2])


async def attach_job(transaction: DriverTransaction, *, user_id: uuid.UUID, key: str, job_id: uuid.UUID) -> None:
    """Record the job the claimed key created."""
    await (await transaction.connection()).execute(_ATTACH, user_id, key, job_id)


async def forget_expired(transaction: DriverTransaction) -> None:
    """Delete up to a batch of keys older than their lifetime (cheap: by the created_at index)."""
    await (await transaction.connection()).execute(_FORGET)
