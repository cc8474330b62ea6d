"""A thin async wrapper over Ray's `JobSubmissionClient` that runs every call in worker threads and sorts errors.

Ray's client is synchronous (`requests`, without timeouts): each call runs in a small thread pool of our own,
with a timeout injected, and its failures become one of: `RayUnavailable` (retry later), `SubmissionExists`
(the submission id is taken: the job was already submitted), `RayJobNotFound`, or `RayRejected` (final).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..metrics import record_ray_error

T = TypeVar("T")

_STATUS_CODE = re.compile(r"status code (\d{3})")
_TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})


class RayError(Exception):
    """A Ray call failed."""


class RayUnavailable(RayError):
    """Ray could not be reached or answered with a server error; the call may work later."""


class RayRejected(RayError):
    """Ray refused the request for good (bad runtime environment, invalid arguments...)."""


class SubmissionExists(RayError):
    """A job with this submission id already exists on the cluster."""


class RayJobNotFound(RayError):
    """Ray does not know this submission id."""


@dataclass(frozen=True, slots=True)
class RayJobState:
    """What Ray reports about one submitted job."""

    submission_id: str
    status: str
    message: str | None = None
    start_time_ms: int | None = None
    end_time_ms: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "STOPPED")


def _status_code(exc: BaseException) -> int | None:
    match = _STATUS_CODE.search(str(exc))
    return int(match.group(1)) if match else None


def classify(exc: BaseException) -> RayError:
    """Turn an exception from Ray's client into one of our error classes."""
    import requests

    if isinstance(exc, RayError):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return RayUnavailable(text)
    if isinstance(exc, requests.RequestException):
        return RayUnavailable(text)
    if "already exists" in text and "submission_id" in text:
        return SubmissionExists(text)
    code = _status_code(exc)
    if code == 404 or "does not exist" in text:
        return RayJobNotFound(text)
    if code is not None and "status code 400" in text:
        # The dashboard wraps its agent's 400 in a 500: the request itself is bad.
        return RayRejected(text)
    if code in _TRANSIENT_CODES:
        return RayUnavailable(text)
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError)):
        return RayRejected(text)
    if code is not None and 400 <= code < 500:
        return RayRejected(text)
    return RayUnavailable(text)


def _is_local_dir(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def _state_from(details: Any) -> RayJobState | None:
    submission_id = getattr(details, "submission_id", None)
    if not submission_id:
        return None
    status = getattr(details, "status", None)
    return RayJobState(
        submission_id=str(submission_id),
        status=str(getattr(status, "value", status)),
        message=getattr(details, "message", None),
        start_time_ms=getattr(details, "start_time", None),
        end_time_ms=getattr(details, "end_time", None),
    )


class RayJobs:
    """Async access to one cluster's job API (the dashboard URL); the client is built lazily, in a thread."""

    def __init__(
        self,
        address: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        submit_timeout: float = 300.0,
        threads: int = 16,
    ):
        self.address = address
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.submit_timeout = submit_timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ray-client")
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._local = threading.local()
        self._packages: dict[str, str] = {}
        """Local directory (immutable: named by its content) -> the gcs:// package URI uploaded to this cluster."""
        self._package_locks: dict[str, threading.Lock] = {}

    def _make_client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        local, default = self._local, self.timeout

        class TimedClient(JobSubmissionClient):
            """Ray's client sends requests without a timeout; every request here gets one."""

            def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", getattr(local, "timeout", None) or default)
                return super()._do_request(method, endpoint, **kwargs)

        return TimedClient(self.address, headers=self.headers or None)

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    async def _call(self, action: Callable[[Any], T], *, timeout: float | None = None, kind: str = "call") -> T:
        def run() -> T:
            self._local.timeout = timeout
            try:
                return action(self._get_client())
            except BaseException as exc:
                raise classify(exc) from exc
            finally:
                self._local.timeout = None

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, run)
        except (RayUnavailable, RayRejected):
            record_ray_error(kind)  # not-found and duplicate submissions are answers, not errors
            raise

    async def submit(
        self,
        *,
        submission_id: str,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
    ) -> bool:
        """Submit a job; True when Ray took it now, False when this submission id was already taken."""

        def submit(client: Any) -> str:
            return str(
                client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env=self._with_package_uris(client, runtime_env),
                    metadata=metadata or {},
                    entrypoint_num_cpus=entrypoint_num_cpus or None,
                )
            )

        try:
            await self._call(submit, timeout=self.submit_timeout, kind="submit")
        except SubmissionExists:
            return False
        return True

    def _with_package_uris(self, client: Any, runtime_env: dict[str, Any]) -> dict[str, Any]:
        """`runtime_env` with its local directories replaced by the URIs of packages already on the cluster.

        Given a local directory, Ray's client hashes all of it on every submission (and zips it when the
        cluster lacks it); the gateway's directories never change (they are named by their content), so each
        is hashed and uploaded once per cluster and then referred to by URI. A package Ray has since dropped
        (no job used it for a while) is found missing by the same existence check Ray makes, and uploaded again.
        """
        env = dict(runtime_env)
        working_dir = env.get("working_dir")
        if isinstance(working_dir, str) and _is_local_dir(working_dir):
            env["working_dir"] = self._package_uri(client, working_dir, parent=False)
        modules = env.get("py_modules")
        if isinstance(modules, list):
            env["py_modules"] = [
                self._package_uri(client, module, parent=True)
                if isinstance(module, str) and _is_local_dir(module)
                else module
                for module in modules
            ]
        return env

    def _package_uri(self, client: Any, path: str, *, parent: bool) -> str:
        with self._client_lock:
            lock = self._package_locks.setdefault(path, threading.Lock())
        with lock:  # jobs of one program submitted at once: the first hashes and uploads, the others wait for it
            uri = self._packages.get(path)
            # Ray's own client makes this check before every submission too (SubmissionClient._package_exists).
            if uri is not None and client._package_exists(uri):
                return uri
            from ray._private.ray_constants import RAY_RUNTIME_ENV_IGNORE_GITIGNORE

            gitignore = os.environ.get(RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"  # as Ray's client decides it
            uri = str(client._upload_package_if_needed(path, include_gitignore=gitignore, include_parent_dir=parent))
            self._packages[path] = uri
            return uri

    async def list_jobs(self) -> dict[str, RayJobState]:
        """Every submitted job the cluster knows, by submission id: one request for all of them."""

        def list_all(client: Any) -> dict[str, RayJobState]:
            found: dict[str, RayJobState] = {}
            for details in client.list_jobs():
                state = _state_from(details)
                if state is not None:
                    found[state.submission_id] = state
            return found

        return await self._call(list_all, kind="status")

    async def job_state(self, submission_id: str) -> RayJobState | None:
        """One job's state, or None when Ray does not know it."""
        try:
            details = await self._call(lambda client: client.get_job_info(submission_id), kind="status")
        except RayJobNotFound:
            return None
        return _state_from(details)

    async def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; True when it was still running. Raises RayJobNotFound."""
        return bool(await self._call(lambda client: client.stop_job(submission_id), kind="stop"))

    async def logs(self, submission_id: str, max_bytes: int, *, wait_end: bool = True) -> str:
        """The job's log (at least its last `max_bytes`) in bounded memory: see final_log. Raises RayJobNotFound."""
        from .final_log import final_log

        try:
            return await final_log(self, submission_id, max_bytes, wait_end=wait_end)
        except RayUnavailable:
            record_ray_error("logs")
            raise

    async def delete(self, submission_id: str) -> None:
        """Forget a finished job on the Ray side (keeps Ray's job list, and our sync, small)."""
        try:
            await self._call(lambda client: client.delete_job(submission_id), kind="delete")
        except RayJobNotFound:
            return

    async def cluster_version(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Ray's /api/version answer (cheap; also a health check): ray_version, session_name..."""

        def version(client: Any) -> dict[str, Any]:
            response = client._do_request("GET", "/api/version")
            if response.status_code != 200:
                raise RuntimeError(f"Request failed with status code {response.status_code}: {response.text}")
            body: dict[str, Any] = response.json()
            return body

        return await self._call(version, timeout=timeout, kind="health")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
