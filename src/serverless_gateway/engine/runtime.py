"""The engine's background tasks, owned by the app's lifespan (or by `serverless-gateway dispatcher`).

Three tasks: the status sync (recovery first: nothing is claimed before one full pass over Ray has succeeded),
the dispatch loop (woken in-process by `wake()`, by Postgres NOTIFY on `gateway_jobs` from other replicas, and by
a slow sweep), and the LISTEN connection itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import Settings
from ..db import create_engine_db_engine, create_sessionmaker
from ..repositories.programs import JOBS_CHANNEL
from ..services.artifacts import ArtifactLimits
from ..services.clusters import shared_static_clusters
from ..state import GatewayState
from .clusters.isolation import NOT_ISOLATED, isolation_mode
from .clusters.local import LocalClusters, default_max_clusters
from .clusters.router import Clusters
from .deadlines import request_overdue_stops
from .dispatcher import Dispatcher
from .joblogs import prepare_logs
from .live_logs import LiveBytes, LiveLogs
from .ray_client import RayError, RayJobs, RayUnavailable
from .sync import StatusSync
from .workdirs import Workdirs

logger = logging.getLogger(__name__)

MIN_SYNC_SECONDS = 0.05
# The sync pass interval adapts to what a pass costs: at least this many times its CPU time (so syncing stays
# around 5% of a core however many jobs run) and twice its duration; at most GATEWAY_SYNC_INTERVAL_SECONDS.
SYNC_CPU_FACTOR = 20
BACKOFF_MAX_SECONDS = 10.0
HEALTH_CACHE_SECONDS = 1.0


class EngineRuntime:
    """Implements the `Engine` protocol of `state.py`."""

    def __init__(self, state: GatewayState, clusters: Clusters):
        self.state = state
        self.clusters = clusters
        self.ray = clusters.shared
        self._wake = asyncio.Event()
        self._sync_soon = asyncio.Event()
        self.recovered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reported: set[asyncio.Task[None]] = set()
        self._health: tuple[float, str | None] = (float("-inf"), None)
        self.ray_healthy = False
        self.own_db_engine: AsyncEngine | None = None
        """The engine's own pool (start_engine), disposed on close."""
        self.isolation = "each tenant's jobs run on a sandboxed Ray head of its own"
        """How tenants are kept apart here, as /status tells it (set by start_engine)."""
        self.dispatcher: Dispatcher | None = None
        self.sync: StatusSync | None = None
        self.live = LiveLogs(clusters, state.read_sessions, self._cluster_known)
        if clusters.configured:
            workdirs = Workdirs(
                state.settings.data_dir / "workdirs", state.storage, limits=ArtifactLimits.from_settings(state.settings)
            )
            self.dispatcher = Dispatcher(
                state=state,
                clusters=clusters,
                workdirs=workdirs,
                on_submitted=self._sync_soon.set,
                wake=self.wake,
                on_ray_unavailable=self._ray_unavailable,
            )
            self.sync = StatusSync(state=state, clusters=clusters, dispatcher=self.dispatcher)
            self.dispatcher.cluster_wait_seconds = 2 * state.settings.cluster_start_timeout_seconds + 30

    def start(self) -> None:
        if not self.clusters.configured:
            return
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="engine-sync"),
            asyncio.create_task(self._dispatch_loop(), name="engine-dispatch"),
            asyncio.create_task(self._listen_loop(), name="engine-listen"),
        ]

    def wake(self) -> None:
        self._wake.set()

    def job_ended(self, job_id: uuid.UUID, exit_code: int, *, result_in_log: bool = False) -> None:
        """The job's launcher reported the entrypoint's exit: finish the job now, in the background."""
        if self.sync is None:
            return
        finishing = self._finish_reported(job_id, exit_code, result_in_log)
        task = asyncio.create_task(finishing, name=f"job-ended-{job_id}")
        self._reported.add(task)
        task.add_done_callback(self._reported.discard)

    async def _finish_reported(self, job_id: uuid.UUID, exit_code: int, result_in_log: bool) -> None:
        assert self.sync is not None
        try:
            await self.sync.job_ended(job_id, exit_code, result_in_log=result_in_log)
        except Exception:  # the status sync finishes it from Ray's view instead
            logger.exception("could not finish job %s at its reported end", job_id)

    def _ray_unavailable(self) -> None:
        self.ray_healthy = False

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.close()
        await self.live.close()
        await self.clusters.close()
        if self.own_db_engine is not None:
            await self.own_db_engine.dispose()

    async def readiness_problem(self) -> str | None:
        if self.ray is None:
            if self.clusters.local is not None:
                return None  # tenant heads start on demand
            return "ray unreachable: no Ray address is configured (GATEWAY_RAY_ADDRESS)"
        checked_at, problem = self._health
        if time.monotonic() - checked_at < HEALTH_CACHE_SECONDS:
            return problem
        try:
            await self.ray.cluster_version(timeout=2.0)
            problem = None
        except RayError as exc:
            problem = f"ray unreachable: {_short(exc)}"
        self._health = (time.monotonic(), problem)
        return problem

    def _cluster_known(self, job_id: uuid.UUID) -> tuple[bool, uuid.UUID | None]:
        if self.sync is not None and job_id in self.sync.cluster_of:
            return True, self.sync.cluster_of[job_id]
        return False, None

    async def live_logs(self, job_id: uuid.UUID, submission_id: str) -> str | None:
        if self.sync is None:
            return None
        async with self.live.tail(job_id, submission_id) as tail:
            if tail is None:
                return None
            start, data = tail.bytes_since(0)
        if start > 0:  # the start is no longer kept: begin at a whole line
            data = data[data.find(b"\n") + 1 :]
        text, _ = await prepare_logs(data.decode("utf-8", errors="replace"), self.state.settings.log_max_bytes)
        return text

    async def unstored_logs(self, job_id: uuid.UUID, submission_id: str) -> str | None:
        if self.sync is None:
            return None
        max_bytes = self.state.settings.log_max_bytes
        raw = await self.live.ended(job_id, submission_id, max_bytes)
        if raw is None:
            return None
        text, _ = await prepare_logs(raw, max_bytes)
        return text

    async def wait_live_log(self, job_id: uuid.UUID, submission_id: str, offset: int, timeout: float) -> None:
        async with self.live.tail(job_id, submission_id) as tail:
            if tail is None:
                await asyncio.sleep(timeout)
            else:
                await tail.wait_beyond(offset, timeout)

    async def live_log_bytes(self, job_id: uuid.UUID, submission_id: str, start: int, limit: int) -> LiveBytes | None:
        if self.sync is None:
            return None
        return await self.live.read(job_id, submission_id, start, limit)

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        """A job was queued somewhere; our own jobs, already claimed here, need no second pass."""
        with contextlib.suppress(ValueError):
            if self.dispatcher is not None and self.dispatcher.recently_claimed(uuid.UUID(payload)):
                return
        self.wake()

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
        event.clear()

    async def _sync_loop(self) -> None:
        assert self.sync is not None
        settings = self.state.settings
        failures = 0
        while True:
            started, cpu_started = time.monotonic(), time.process_time()
            try:
                await request_overdue_stops(self.state.sessionmaker, datetime.now(UTC), settings.max_job_seconds)
                ended = await self.sync.sync_once()
                failures = 0
                self.ray_healthy = True
                if not self.recovered.is_set():
                    logger.info("engine recovered: every PENDING/RUNNING job reconciled with Ray")
                    self.recovered.set()
                if ended:
                    self.wake()  # slots were freed
                cost = max(2 * (time.monotonic() - started), SYNC_CPU_FACTOR * (time.process_time() - cpu_started))
                interval = min(settings.sync_interval_seconds, max(MIN_SYNC_SECONDS, cost))
                if self.sync.active_count == 0:
                    interval = settings.sync_interval_seconds  # nothing runs: a submission here wakes us
            except RayUnavailable as exc:
                failures += 1
                self.ray_healthy = False
                interval = _backoff(failures)
                logger.warning("Ray unreachable during status sync (%s); retrying in %.1f s", _short(exc), interval)
            except Exception:
                failures += 1
                interval = _backoff(failures)
                logger.exception("status sync failed; retrying in %.1f s", interval)
            await self._wait(self._sync_soon, interval)

    async def _dispatch_loop(self) -> None:
        assert self.dispatcher is not None
        assert self.sync is not None
        await self.recovered.wait()
        settings = self.state.settings
        failures = 0
        while True:
            try:
                if not self.ray_healthy and self.ray is not None:
                    await self.ray.cluster_version(timeout=5.0)
                self.ray_healthy = True
                await self.dispatcher.dispatch()
                self.dispatcher.run_due_retries()
                if await self.sync.handle_stops():
                    self._sync_soon.set()
                failures = 0
                timeout = settings.sweep_interval_seconds
            except RayUnavailable as exc:
                failures += 1
                timeout = _backoff(failures)
                logger.warning("Ray unreachable; not taking new work for %.1f s (%s)", timeout, _short(exc))
            except Exception:
                failures += 1
                timeout = _backoff(failures)
                logger.exception("dispatch pass failed; retrying in %.1f s", timeout)
            next_retry = self.dispatcher.next_retry_in()
            if next_retry is not None:
                timeout = min(timeout, next_retry)
            await self._wait(self._wake, timeout)

    async def _listen_loop(self) -> None:
        """Wake on NOTIFY from other replicas; reconnect with backoff when the connection drops."""
        url = self.state.settings.database_url
        if url is None:
            return
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        failures = 0
        while True:
            try:
                await self._listen_once(dsn)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                logger.warning("LISTEN %s connection failed (%s); reconnecting", JOBS_CHANNEL, exc)
            await asyncio.sleep(_backoff(failures))

    async def _listen_once(self, dsn: str) -> None:
        """Listen until the connection is lost."""
        connection = await asyncpg.connect(dsn, server_settings={"application_name": "gateway-engine-listen"})
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _conn: lost.set())
            await connection.add_listener(JOBS_CHANNEL, self._notified)
            self.wake()  # notifications sent while disconnected were missed
            while not lost.is_set() and not connection.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=30)
                if not lost.is_set():
                    await connection.execute("SELECT 1")
        finally:
            if not connection.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), timeout=2)


def _backoff(failures: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, 0.5 * 2 ** max(0, failures - 1)))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def private_paths(settings: Settings) -> list[Path]:
    """What tenant heads must not see besides the data dir: a file storage elsewhere, a database's socket dir."""
    paths: list[Path] = []
    storage = settings.resolved_storage_url
    if storage.startswith("file://"):
        paths.append(Path(storage.removeprefix("file://")))
    if settings.database_url is not None:
        url = make_url(settings.database_url)
        hosts = url.query.get("host") or url.host or ()
        for host in (hosts,) if isinstance(hosts, str) else hosts:
            if host.startswith("/"):
                paths.append(Path(host))
    return paths


async def start_engine(state: GatewayState) -> EngineRuntime:
    """Build the engine for the configured clusters (re-adopting local tenant heads) and start its tasks.

    The engine gets a pool of its own: a flood of API requests never holds up dispatch and status, and the
    engine's longer statements keep their full timeout while API requests get GATEWAY_DB_REQUEST_TIMEOUT_SECONDS.
    """
    own_db = create_engine_db_engine(state.settings)
    try:
        runtime = await _start_engine(
            dataclasses.replace(state, db_engine=own_db, sessionmaker=create_sessionmaker(own_db))
        )
    except BaseException:
        await own_db.dispose()
        raise
    runtime.own_db_engine = own_db
    return runtime


async def _start_engine(state: GatewayState) -> EngineRuntime:
    settings = state.settings
    address = settings.ray_address
    local = None
    if address is None:
        mode, problem = isolation_mode(settings)
        if mode == "local":
            local = LocalClusters(
                sessionmaker=state.sessionmaker,
                data_dir=settings.data_dir,
                private_paths=private_paths(settings),
                max_clusters=settings.max_clusters or default_max_clusters(),
                idle_seconds=settings.cluster_idle_seconds,
                num_cpus=settings.cluster_num_cpus,
                startup_timeout=settings.cluster_start_timeout_seconds,
                spares=settings.cluster_spares,
            )
            adopted = await local.adopt()
            logger.info(
                "tenant isolation on: each tenant's jobs run on a sandboxed Ray head of its own "
                "(at most %d at once, idle ones stop after %.0f s; %d re-adopted)",
                local.max_clusters,
                settings.cluster_idle_seconds,
                adopted,
            )
        else:
            logger.error("the engine has no Ray address (GATEWAY_RAY_ADDRESS); jobs stay QUEUED (%s)", problem)
    else:
        logger.warning(
            "every tenant without a cluster assignment runs on GATEWAY_RAY_ADDRESS %s: one trust domain "
            "(their jobs can see each other's); see docs/security.md",
            address,
        )
    async with state.sessionmaker() as session:
        for name in await shared_static_clusters(session):
            logger.warning(
                "static cluster %s runs the jobs of several tenants (a group, a provider or several assignments): "
                "one trust domain, their jobs can see each other's; see docs/security.md",
                name,
            )
    clusters = Clusters(sessionmaker=state.sessionmaker, shared=RayJobs(address) if address else None, local=local)
    runtime = EngineRuntime(state, clusters)
    if local is None:
        runtime.isolation = f"{NOT_ISOLATED} (tenants without a cluster assignment share {address or 'no cluster'})"
    if local is not None:
        local.on_change = runtime.wake
    runtime.start()
    return runtime
