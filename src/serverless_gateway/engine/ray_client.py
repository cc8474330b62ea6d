"""An async client of Ray's job REST API (the dashboard's `/api/jobs/` and `/api/packages/`) that sorts errors.

Ray's own `JobSubmissionClient` is synchronous (`requests`, a new connection per call, no timeouts) and needs
most of Ray imported (~35 MiB of the gateway's memory); this speaks the same documented HTTP API with httpx:
keep-alive connections, a timeout on every call, nothing off the event loop but zipping a directory.
Failures become one of: `RayUnavailable` (retry later), `SubmissionExists` (the submission id is taken: the
job was already submitted), `RayJobNotFound`, or `RayRejected` (final).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..metrics import record_ray_error
from ..services.json_check import loads_off_loop

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
    """Turn an exception from a call to Ray (or Ray's error answer, see `_answer_error`) into one of our classes."""
    if isinstance(exc, RayError):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (httpx.HTTPError, ConnectionError, TimeoutError)):
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
    """A job's state from one entry of Ray's job list (JSON: the fields of Ray's `JobDetails`)."""
    if not isinstance(details, dict):
        return None
    submission_id = details.get("submission_id")
    if not submission_id:
        return None
    return RayJobState(
        submission_id=str(submission_id),
        status=str(details.get("status")),
        message=details.get("message"),
        start_time_ms=details.get("start_time"),
        end_time_ms=details.get("end_time"),
    )


def _answer_error(response: httpx.Response) -> RayError:
    """Ray's non-2xx answer as our error (worded as Ray's own client words it, which `classify` reads)."""
    return classify(RuntimeError(f"Request failed with status code {response.status_code}: {response.text}."))


PACKAGE_PREFIX = "_ray_pkg_"
"""How Ray names uploaded packages (`gcs://_ray_pkg_<hash>.zip`)."""


def zip_directory(path: str, *, include_parent_dir: bool, bundle: str | None = None) -> bytes:
    """A directory as Ray's client packs it: its files (and empty directories) relative to it, or, with
    `include_parent_dir` (py_modules), under the directory's own name. Symbolic links are left out (never
    followed out of the directory); entries are sorted and dated 1980 so that the same content zips the same.

    `bundle`, another directory, is packed beside the files under its own name (instead of anything of that
    name in `path`): the launcher package travels in each program's working-dir package, so a job needs one.
    """
    root = Path(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        skip = Path(bundle).name if bundle is not None else None
        _add_tree(archive, root, f"{root.name}/" if include_parent_dir else "", skip=skip)
        if bundle is not None:
            _add_tree(archive, Path(bundle), f"{Path(bundle).name}/", skip=None)
    return buffer.getvalue()


def _add_tree(archive: zipfile.ZipFile, root: Path, prefix: str, *, skip: str | None) -> None:
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        if base == root and skip is not None:
            dirs[:] = [name for name in dirs if name != skip]
            files = [name for name in files if name != skip]
        dirs.sort()
        if not dirs and not files and base != root:
            entries = [base]
        else:
            entries = [base / name for name in sorted(files)]
        for entry in entries:
            info = entry.lstat()
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                continue
            name = prefix + entry.relative_to(root).as_posix()
            if stat.S_ISDIR(info.st_mode):
                archive.writestr(zipfile.ZipInfo(f"{name}/"), b"")
                continue
            member = zipfile.ZipInfo(name)
            member.external_attr = (info.st_mode & 0o7777) << 16
            archive.writestr(member, entry.read_bytes())


def package_uri(data: bytes) -> str:
    return f"gcs://{PACKAGE_PREFIX}{hashlib.sha256(data).hexdigest()[:32]}.zip"


class RayJobs:
    """Async access to one cluster's job API (the dashboard URL), over one pool of keep-alive connections."""

    def __init__(
        self,
        address: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        submit_timeout: float = 300.0,
    ):
        self.address = address.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.submit_timeout = submit_timeout
        self._http = httpx.AsyncClient(
            base_url=self.address,
            headers=self.headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )
        self._packages: dict[str, str] = {}
        """Local directory (immutable: named by its content) -> the gcs:// package URI uploaded to this cluster."""
        self._package_locks: dict[str, asyncio.Lock] = {}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        timeout: float | None = None,
        expected: frozenset[int] = frozenset(),
        **kwargs: Any,
    ) -> httpx.Response:
        """One call to Ray; a transport failure or an error answer raises our error, except the error codes in
        `expected`, which the caller reads itself (Ray's not-found and duplicate answers are answers, not errors
        for the metrics)."""
        try:
            response = await self._http.request(method, path, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kwargs)
        except httpx.HTTPError as exc:
            record_ray_error(kind)
            raise RayUnavailable(f"{type(exc).__name__} calling Ray at {self.address}{path}: {exc}") from exc
        if response.status_code >= 400 and response.status_code not in expected:
            error = _answer_error(response)
            if isinstance(error, (RayUnavailable, RayRejected)):
                record_ray_error(kind)
            raise error
        return response

    async def _json(self, response: httpx.Response) -> Any:
        try:
            return await loads_off_loop(response.content)
        except ValueError as exc:
            raise RayUnavailable(f"Ray's answer to {response.request.url.path} is not JSON") from exc

    async def submit(
        self,
        *,
        submission_id: str,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
        bundle: str | None = None,
    ) -> bool:
        """Submit a job; True when Ray took it now, False when this submission id was already taken.

        `bundle`: a directory packed into the working-dir package under its own name (see `zip_directory`).
        """
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "runtime_env": await self._with_package_uris(runtime_env, bundle=bundle),
            "metadata": metadata or {},
        }
        if entrypoint_num_cpus:
            body["entrypoint_num_cpus"] = entrypoint_num_cpus
        try:
            await self._request("POST", "/api/jobs/", kind="submit", timeout=self.submit_timeout, json=body)
        except SubmissionExists:
            return False
        return True

    async def _with_package_uris(self, runtime_env: dict[str, Any], *, bundle: str | None = None) -> dict[str, Any]:
        """`runtime_env` with its local directories replaced by the URIs of packages already on the cluster.

        The gateway's directories never change (they are named by their content), so each is zipped and
        uploaded once per cluster and then referred to by URI. A package Ray has since dropped (no job used it
        for a while) is found missing by the existence check Ray's own client makes, and uploaded again.
        """
        env = dict(runtime_env)
        # (key, index in py_modules or None for working_dir, local directory) of every package to refer to
        wanted: list[tuple[str, int | None, str]] = []
        working_dir = env.get("working_dir")
        if isinstance(working_dir, str) and _is_local_dir(working_dir):
            wanted.append(("working_dir", None, working_dir))
        modules = env.get("py_modules")
        if isinstance(modules, list):
            modules = env["py_modules"] = list(modules)
            wanted += [("py_modules", i, m) for i, m in enumerate(modules) if isinstance(m, str) and _is_local_dir(m)]
        # Checked (and uploaded when missing) at once: each check is a round trip to Ray.
        uris = await asyncio.gather(
            *(
                self._package_uri(path, parent=key == "py_modules", bundle=bundle if key == "working_dir" else None)
                for key, _, path in wanted
            )
        )
        for (key, index, _), uri in zip(wanted, uris, strict=True):
            if index is None:
                env[key] = uri
            else:
                env[key][index] = uri
        return env

    async def _package_uri(self, path: str, *, parent: bool, bundle: str | None = None) -> str:
        key = path if bundle is None else f"{path}\0{bundle}"
        lock = self._package_locks.setdefault(key, asyncio.Lock())
        async with lock:  # jobs of one program submitted at once: the first zips and uploads, the others wait
            uri = self._packages.get(key)
            if uri is not None and await self._package_exists(uri):
                return uri
            data = await asyncio.to_thread(zip_directory, path, include_parent_dir=parent, bundle=bundle)
            uri = package_uri(data)
            if not await self._package_exists(uri):
                name = uri.removeprefix("gcs://")
                await self._request(
                    "PUT", f"/api/packages/gcs/{name}", kind="submit", timeout=self.submit_timeout, content=data
                )
            self._packages[key] = uri
            return uri

    async def _package_exists(self, uri: str) -> bool:
        path = f"/api/packages/gcs/{uri.removeprefix('gcs://')}"
        response = await self._request("GET", path, kind="submit", expected=frozenset({404}))
        if response.status_code not in (200, 404):
            raise _answer_error(response)  # a 2xx or 3xx Ray does not send for this
        return response.status_code == 200

    async def list_jobs(self) -> dict[str, RayJobState]:
        """Every submitted job the cluster knows, by submission id: one request for all of them."""
        answer = await self._json(await self._request("GET", "/api/jobs/", kind="status"))
        found: dict[str, RayJobState] = {}
        for details in answer if isinstance(answer, list) else []:
            state = _state_from(details)
            if state is not None:
                found[state.submission_id] = state
        return found

    async def job_state(self, submission_id: str) -> RayJobState | None:
        """One job's state, or None when Ray does not know it."""
        try:
            response = await self._request("GET", f"/api/jobs/{submission_id}", kind="status")
        except RayJobNotFound:
            return None
        return _state_from(await self._json(response))

    async def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; True when it was still running. Raises RayJobNotFound."""
        answer = await self._json(await self._request("POST", f"/api/jobs/{submission_id}/stop", kind="stop"))
        return bool(isinstance(answer, dict) and answer.get("stopped"))

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
            await self._request("DELETE", f"/api/jobs/{submission_id}", kind="delete")
        except RayJobNotFound:
            return

    async def cluster_version(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Ray's /api/version answer (cheap; also a health check): ray_version, session_name..."""
        answer = await self._json(await self._request("GET", "/api/version", kind="health", timeout=timeout))
        if not isinstance(answer, dict):
            raise RayUnavailable("Ray's /api/version answer is not what its API documents")
        return answer

    async def close(self) -> None:
        await self._http.aclose()
