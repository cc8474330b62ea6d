"""What a claimed job is submitted to Ray with: working dir (with the launcher), pip packages, env vars, resources.

`config` mapping (documented in docs/engine.md): the entrypoint reserves `job_entrypoint_num_cpus` CPUs
(default 0, Ray's own default, so the gateway's running-job caps bound concurrency); `workers`, `min_workers`,
`max_workers` and `auto_scaling` are advisory on a shared cluster: they reach the job as the JSON env var
`GATEWAY_JOB_CONFIG` and as Ray job metadata, and whatever Ray tasks the job starts reserve their own resources.
"""

from __future__ import annotations

import json
import shlex
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..repositories.engine import ClaimedJob
from ..services.artifacts import ArtifactRejected
from ..services.requirements import allowed_names, requirement_refusal
from ..storage.base import ObjectNotFound
from .workdirs import LAUNCHER_PACKAGE, Workdirs

SUBMISSION_PREFIX = "gw-"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


class SubmissionRejected(Exception):
    """The job can never be submitted as it is (missing entrypoint, forbidden dependency...): it fails."""


@dataclass(frozen=True, slots=True)
class Submission:
    job_id: uuid.UUID
    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None
    bundle: str | None = None
    """The launcher package, packed into the working-dir package (one package per job to set up, not two)."""


def submission_id_for(job_id: uuid.UUID) -> str:
    """Derived from the job id, so a retried submission can never start the job twice."""
    return f"{SUBMISSION_PREFIX}{job_id}"


def job_id_from_submission(submission_id: str) -> uuid.UUID | None:
    if not submission_id.startswith(SUBMISSION_PREFIX):
        return None
    try:
        return uuid.UUID(submission_id.removeprefix(SUBMISSION_PREFIX))
    except ValueError:
        return None


def check_dependencies(dependencies: list[str], allowlist: list[str] | None) -> list[str]:
    """The program's pip requirements, refused when a package is outside the allow-list."""
    requirements = [str(dep).strip() for dep in dependencies if str(dep).strip()]
    if allowlist is None:
        return requirements
    allowed = allowed_names(allowlist)
    for requirement in requirements:
        refusal = requirement_refusal(requirement, allowed)
        if refusal is not None:
            raise SubmissionRejected(f"dependency refused by the gateway's allow-list: {refusal}")
    return requirements


def job_env(claimed: ClaimedJob, *, bootstrap: str, settings: Settings) -> dict[str, str]:
    """What Ray sees of a job's environment: nothing secret (no token, arguments or program env var values).

    The launcher trades the one-time `GATEWAY_JOB_BOOTSTRAP` code for those at the gateway, and always syncs
    DATA_PATH (a per-job scratch directory) with the function's files through the files API.
    """
    job = claimed.job
    return {
        "ENV_JOB_GATEWAY_HOST": settings.public_url or DEFAULT_PUBLIC_URL,
        "ENV_JOB_ID_GATEWAY": str(job.id),
        "ENV_GATEWAY_PROVIDER_VERSION": "v1",
        "GATEWAY_JOB_BOOTSTRAP": bootstrap,
        "GATEWAY_JOB_CONFIG": json.dumps(job.config or {}),
        "GATEWAY_DATA_FUNCTION": claimed.program.title,
        "GATEWAY_DATA_PROVIDER": claimed.provider_name or "",
        "GATEWAY_DATA_SYNC": "1",
        "PYTHONUNBUFFERED": "1",
    }


async def build_submission(
    claimed: ClaimedJob, *, bootstrap: str, settings: Settings, workdirs: Workdirs
) -> Submission:
    """Prepare the working dir and launcher package of a claimed job; SubmissionRejected when it cannot run.

    Storage outages propagate as StorageError (transient: the submission is retried).
    """
    job, program = claimed.job, claimed.program
    requirements = check_dependencies(list(program.dependencies or []), settings.dependency_allowlist)
    try:
        program_dir = await workdirs.program_dir(sha256=program.artifact_sha256, artifact_key=program.artifact_key)
    except ObjectNotFound:
        raise SubmissionRejected("the program's artifact is missing from storage; upload the program again") from None
    except ArtifactRejected as exc:
        raise SubmissionRejected(exc.message) from None
    if not await workdirs.has_file(program.artifact_sha256, program.entrypoint):
        raise SubmissionRejected(f"entrypoint {program.entrypoint!r} was not found in the program's files")
    package = await workdirs.launcher_package()
    runtime_env: dict[str, Any] = {
        "working_dir": str(program_dir),
        "env_vars": job_env(claimed, bootstrap=bootstrap, settings=settings),
    }
    if requirements:
        runtime_env["pip"] = requirements
    metadata = {"gateway_job_id": str(job.id), "config": json.dumps(job.config or {})}
    return Submission(
        job_id=job.id,
        submission_id=submission_id_for(job.id),
        entrypoint=f"python -m {LAUNCHER_PACKAGE} {shlex.quote(program.entrypoint)}",
        runtime_env=runtime_env,
        metadata=metadata,
        entrypoint_num_cpus=settings.job_entrypoint_num_cpus or None,
        bundle=str(package),
    )
