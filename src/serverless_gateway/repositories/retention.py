"""SQL of garbage collection: which stored objects rows still name, and the lock that keeps uploads safe."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from ..models import Job, JobStatus, Program

ARTIFACTS_LOCK_KEY = 0x61727466  # "artf"
"""Uploads hold it shared from storing an artifact to their commit; a collection holds it exclusively."""


async def hold_artifacts_shared(session: AsyncSession) -> None:
    """Until this transaction ends, no collection deletes an artifact (one this upload may be reusing)."""
    await session.execute(select(func.pg_advisory_xact_lock_shared(ARTIFACTS_LOCK_KEY)))


async def lock_artifacts(session: AsyncSession) -> None:
    """Wait for the uploads in flight to commit, and keep new ones from storing an artifact until this ends."""
    await session.execute(select(func.pg_advisory_xact_lock(ARTIFACTS_LOCK_KEY)))


async def referenced(
    session: AsyncSession, column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None], keys: Iterable[str]
) -> set[str]:
    """Those of `keys` that some row holds in `column`."""
    wanted = list(keys)
    if not wanted:
        return set()
    rows = await session.scalars(select(column).where(column.in_(wanted)).distinct())
    return {key for key in rows if key is not None}


async def artifact_shas(session: AsyncSession) -> set[str]:
    """The sha256 of every artifact a program uses."""
    return set((await session.scalars(select(Program.artifact_sha256).distinct())).all())


async def claims_older_than_their_program(session: AsyncSession) -> bool:
    """Whether a submission is being built from a program that changed since the claim (it may need the old
    artifact for a moment still)."""
    stale = exists().where(
        Job.program_id == Program.id,
        Job.status == JobStatus.PENDING.value,
        Job.submitted_at.is_(None),
        Job.updated_at <= Program.updated_at,
    )
    return bool(await session.scalar(select(stale)))
