"""Reading a job's logs: stored at the end, live from Ray while it runs, split for providers."""

from __future__ import annotations

import re

from ..models import Job, JobStatus
from ..state import GatewayState
from ..storage.base import ObjectNotFound

_PUBLIC = "[PUBLIC]"
_PRIVATE = "[PRIVATE]"
_PREFIXED = re.compile(r"^(?P<head>.*?)(?P<tag>\[PUBLIC\]|\[PRIVATE\])\s?(?P<rest>.*)$")


def split_logs(raw: str, *, for_provider: bool) -> str:
    """User view: drop `[PRIVATE]` lines and strip `[PUBLIC]` tags. Provider view: everything, as is.

    Lines that carry no tag are user-visible (print output, tracebacks); the provider sees all lines.
    """
    if for_provider:
        return raw
    kept: list[str] = []
    for line in raw.splitlines(keepends=True):
        match = _PREFIXED.match(line)
        if match is None:
            kept.append(line)
        elif match.group("tag") == _PUBLIC:
            kept.append(match.group("head") + match.group("rest") + ("\n" if line.endswith("\n") else ""))
    return "".join(kept)


async def raw_job_logs(state: GatewayState, job: Job) -> str:
    """The job's whole log text: the stored copy once it ended, Ray's live logs while it runs."""
    if job.logs_key:
        try:
            return (await state.storage.get_bytes(job.logs_key)).decode("utf-8", errors="replace")
        except ObjectNotFound:
            return ""
    if (
        state.engine is not None
        and job.ray_submission_id
        and JobStatus(job.status) in (JobStatus.PENDING, JobStatus.RUNNING)
    ):
        return await state.engine.live_logs(job.id, job.ray_submission_id) or ""
    return ""


async def read_job_logs(state: GatewayState, job: Job, *, provider_program: bool, for_provider: bool) -> str:
    """Logs as one reader should see them; user programs' logs are shown whole to their author."""
    raw = await raw_job_logs(state, job)
    if not provider_program:
        return raw
    return split_logs(raw, for_provider=for_provider)
