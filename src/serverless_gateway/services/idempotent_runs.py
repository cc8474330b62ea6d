"""`programs/run` with an `Idempotency-Key`: the same key and body give back the first job; another body is 409."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..auth import Principal
from ..config import Settings
from ..db import DriverTransaction
from ..errors import Conflict
from ..models import JobStatus
from ..repositories import idempotency as repo
from ..schemas.programs import RunOut, RunRequest
from .programs import run_program


@dataclass(frozen=True, slots=True)
class KeyedRun:
    """The job of a keyed run, and whether an earlier request with the key created it."""

    out: RunOut
    replayed: bool


def body_digest(request: RunRequest) -> str:
    """SHA-256 of the request as validated, in a canonical JSON form (key order and spacing do not matter)."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_with_key(
    transaction: DriverTransaction,
    *,
    settings: Settings,
    user: Principal,
    request: RunRequest,
    key: str,
    wake: Callable[[], None],
) -> KeyedRun:
    """Queue a job unless this user's `key` already created one in the last 24 h for the same body."""
    digest = body_digest(request)
    await repo.forget_expired(transaction)
    earlier = await repo.claim_key(transaction, user_id=user.user_id, key=key, body_sha256=digest)
    if earlier is None:
        out = await run_program(transaction, settings=settings, user=user, request=request, wake=wake)
        await repo.attach_job(transaction, user_id=user.user_id, key=key, job_id=out.id)
        return KeyedRun(out=out, replayed=False)
    if earlier.body_sha256 != digest:
        raise Conflict("This Idempotency-Key was already used with a different request body; use a new key.")
    if earlier.job_id is None or earlier.status is None:  # cannot happen: the key's row commits with its job
        raise Conflict("The request that used this Idempotency-Key did not create a job; use a new key.")
    return KeyedRun(out=RunOut(id=uuid.UUID(str(earlier.job_id)), status=JobStatus(earlier.status)), replayed=True)
