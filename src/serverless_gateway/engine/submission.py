"""What a claimed job is submitted to Ray with: working dir, launcher package, pip packages, env vars, resources.

`config` mapping (documented in docs/engine.md): the entrypoint reserves `job_entrypoint_num_cpus` CPUs
(default 0, Ray's own default, so the gateway's running-job caps bound concurrency); `workers`, `min_workers`,
`max_workers` and `auto_scaling` are advisory on a shared cluster: they reach the job as the JSON env var
`GATEWAY_JOB_CONFIG` and as Ray job metadata, and whatever Ray tasks the job starts reserve their own resources.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..repositories.engine import ClaimedJob
from ..services.artifacts import ArtifactRejected
from ..services.files import user_files_prefix
from ..storage.base import ObjectNotFound, Storage
from ..storage.local import LocalStorage
from .workdirs import LAUNCHER_PACKAGE, Workdirs

SUBMISSION_PREFIX = "gw-"
# Environment strings above ~128 KiB break exec(); bigger arguments reach the job only through ARGUMENTS_PATH.
MAX_ENV_ARGUMENTS_BYTES = 64 * 1024
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


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


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_dependencies(dependencies: list[str], allowlist: list[str] | None) -> list[str]:
    """The program's pip requirements, refused when a package is outside the allow-list."""
    requirements = [str(dep).strip() for dep in dependencies if str(dep).strip()]
    if allowlist is None:
        return requirements
    allowed = {_normalized(name) for name in allowlist}
    for requirement in requirements:
        match = _NAME.match(requirement)
        if match is None or _normalized(match.group(1)) not in allowed:
            raise SubmissionRejected(f"dependency {requirement!r} is not in the gateway's allow-list")
    return requirements


def job_env(claimed: ClaimedJob, *, token: str, settings: Settings, data_path: str | None = None) -> dict[str, str]:
    """The program's env vars, then the in-job contract of the official client (these win)."""
    job = claimed.job
    env = {str(key): str(value) for key, value in (claimed.program.env_vars or {}).items()}
    env.update(
        {
            "ENV_JOB_GATEWAY_HOST": settings.public_url or DEFAULT_PUBLIC_URL,
            "ENV_JOB_GATEWAY_TOKEN": token,
            "ENV_JOB_ID_GATEWAY": str(job.id),
            "ENV_GATEWAY_PROVIDER_VERSION": "v1",
            "GATEWAY_JOB_CONFIG": json.dumps(job.config or {}),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if len(job.arguments.encode("utf-8")) <= MAX_ENV_ARGUMENTS_BYTES:
        env["ENV_JOB_ARGUMENTS"] = job.arguments
    if data_path is not None:
        env["DATA_PATH"] = data_path
    # Without the gateway's own file space, the launcher copies the function's files in and out of DATA_PATH.
    env["GATEWAY_DATA_FUNCTION"] = claimed.program.title
    env["GATEWAY_DATA_PROVIDER"] = claimed.provider_name or ""
    env["GATEWAY_DATA_SYNC"] = "0" if data_path is not None else "1"
    return env


async def local_data_path(claimed: ClaimedJob, storage: Storage, workdirs: Workdirs) -> str | None:
    """With local storage, the user's file space of this function (what the files API lists), else None.

    It is only meaningful when the Ray workers share the gateway's filesystem (a local head); elsewhere the
    launcher falls back to a scratch directory when the path cannot be created.
    """
    if not isinstance(storage, LocalStorage):
        return None
    prefix = user_files_prefix(claimed.job.author_id, claimed.provider_name, claimed.program.title)
    path = storage.root.joinpath(*prefix.strip("/").split("/"))
    await workdirs.ensure_dir(path)
    return str(path)


async def build_submission(
    claimed: ClaimedJob, *, token: str, settings: Settings, workdirs: Workdirs, storage: Storage
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
    data_path = await local_data_path(claimed, storage, workdirs)
    package = await workdirs.job_package(job_id=job.id, arguments=job.arguments)
    runtime_env: dict[str, Any] = {
        "working_dir": str(program_dir),
        "py_modules": [str(package)],
        "env_vars": job_env(claimed, token=token, settings=settings, data_path=data_path),
    }
    if requirements:
        runtime_env["pip"] = requirements
    metadata = {"gateway_job_id": str(job.id), "gateway_user": claimed.username, "config": json.dumps(job.config or {})}
    return Submission(
        job_id=job.id,
        submission_id=submission_id_for(job.id),
        entrypoint=f"python -m {LAUNCHER_PACKAGE} {shlex.quote(program.entrypoint)}",
        runtime_env=runtime_env,
        metadata=metadata,
        entrypoint_num_cpus=settings.job_entrypoint_num_cpus or None,
    )
