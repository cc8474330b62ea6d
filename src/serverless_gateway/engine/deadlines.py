"""The maximum run time: PENDING and RUNNING jobs past their limit are asked to stop, with the limit as reason."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from ..db import SessionMaker
from ..repositories import engine as repo

logger = logging.getLogger(__name__)


def run_limit(asked: object, default_max_seconds: int) -> tuple[int, str]:
    """The job's limit in seconds, and where it comes from (a run's config may only ask for less)."""
    if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < default_max_seconds:
        return asked, "config.max_run_seconds"
    return default_max_seconds, "GATEWAY_MAX_JOB_SECONDS"


def overdue_reason(limit: int, source: str) -> str:
    return f"Stopped: the job ran longer than its maximum run time of {limit} seconds ({source})."


async def request_overdue_stops(sessionmaker: SessionMaker, now: datetime, default_max_seconds: int) -> list[uuid.UUID]:
    """Mark every job past its run-time limit `stop_requested`, recording the limit; returns the jobs marked.

    A job's time counts from its start (RUNNING) or, before that, from its submission to Ray (PENDING: Ray
    building its environment); QUEUED time waiting for capacity does not count.
    """
    marked: list[uuid.UUID] = []
    async with sessionmaker() as session, session.begin():
        # The shortest limit a config may ask is 1 s: anything younger cannot be overdue.
        for job in await repo.timed_jobs(session, started_before=now - timedelta(seconds=1)):
            limit, source = run_limit(job.asked_max_seconds, default_max_seconds)
            if job.since + timedelta(seconds=limit) > now:
                continue
            if await repo.request_stop(session, job.id, reason=overdue_reason(limit, source)):
                logger.info("job %s passed its maximum run time of %d s; stopping it", job.id, limit)
                marked.append(job.id)
    return marked
