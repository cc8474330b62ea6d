"""The engine's background tasks, owned by the app's lifespan (or by `serverless-gateway dispatcher`).

Three tasks: the status sync (recovery first: nothing is claimed before one full pass over Ray has succeeded),
the dispatch loop (woken in-process by `wake()`, by Postgres NOTIFY on `gateway_jobs` from other replicas, and by
a slow sweep), and the LISTEN connection itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from ..repositories.programs import JOBS_CHANNEL
from ..state import GatewayState
from .dispatcher import Dispatcher
from .joblogs import prepare_logs
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

    def __init__(self, state: GatewayState, ray: RayJobs | None):
        self.state = state
        self.ray = ray
        self._wake = asyncio.Event()
        self._sync_soon = asyncio.Event()
        self.recovered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._health: tuple[float, str | None] = (float("-inf"), None)
        self.ray_healthy = False
        self.dispatcher: Dispatcher | None = None
        self.sync: StatusSync | None = None
        if ray is not None:
            workdirs = Workdirs(state.settings.data_dir / "workdirs", state.storage)
            self.dispatcher = Dispatcher(
                state=state,
                ray=ray,
                workdirs=workdirs,
                on_submitted=self._sync_soon.set,
                wake=self.wake,
                on_ray_unavailable=self._ray_unavailable,
            )
            self.sync = StatusSync(state=state, ray=ray, dispatcher=self.dispatcher)

    def start(self) -> None:
        if self.ray is None:
            return
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="engine-sync"),
            asyncio.create_task(self._dispatch_loop(), name="engine-dispatch"),
            asyncio.create_task(self._listen_loop(), name="engine-listen"),
        ]

    def wake(self) -> None:
        self._wake.set()

    def _ray_unavailable(self) -> None:
        self.ray_healthy = False

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.ray is not None:
            await self.ray.close()

    async def readiness_problem(self) -> str | None:
        if self.ray is None:
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

    async def live_logs(self, job_id: uuid.UUID, submission_id: str) -> str | None:
        if self.ray is None:
            return None
        try:
            raw = await self.ray.logs(submission_id)
        except RayError:
            return None
        text, _ = await prepare_logs(raw, self.state.settings.log_max_bytes)
        return text

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


async def start_engine(state: GatewayState) -> EngineRuntime:
    """Build the engine for the configured Ray cluster and start its background tasks."""
    address = state.settings.ray_address
    if address is None:
        logger.error("the engine has no Ray address (GATEWAY_RAY_ADDRESS); jobs stay QUEUED")
    runtime = EngineRuntime(state, RayJobs(address) if address else None)
    runtime.start()
    return runtime
