"""The `local` cluster provider: one sandboxed Ray head per tenant on this machine, started on demand.

Heads are recorded in the `ray_cluster` registry (tenant, address, token, state, last used) and outlive a
gateway killed with SIGKILL: the next gateway re-adopts the ones that still answer with their token. Idle heads
stop after `cluster_idle_seconds`; at most `max_clusters` run at once, and at the cap the least recently used
idle head makes room for a new tenant (with none idle, new tenants' jobs wait QUEUED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from ...db import SessionMaker
from ...metrics import set_clusters
from ...models import ClusterState
from ...repositories import clusters as repo
from ..ray_client import RayJobs
from . import ClusterFailed, ClusterGone, ClusterWait
from .sandbox import (
    START_LOG,
    HeadSpec,
    HeadStartError,
    SandboxedHead,
    default_hidden,
    new_spec,
    release_port_block,
    root_cause,
)

logger = logging.getLogger(__name__)

HEAD_RSS_BYTES = 800 * 1024 * 1024  # one idle head measured at 700-780 MiB RSS (bench/cluster_bench.py)
# A head whose last job was placed this recently is never taken for another tenant (its job may not be synced yet).
RECENT_SECONDS = 5.0
START_ATTEMPTS = 2
START_CONCURRENCY = 2


def default_max_clusters() -> int:
    """As many heads as half of the machine's available memory holds, at least one."""
    available = psutil.virtual_memory().available
    return max(1, int(available * 0.5 // HEAD_RSS_BYTES))


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(psutil.Process().create_time())}"


def owned_elsewhere(owner: str | None) -> bool:
    """Whether a registry row belongs to another live gateway: one on another host, or another live process here
    (two replicas on one machine). Its heads are that gateway's to adopt or stop, not ours."""
    if not owner or owner == owner_id():
        return False
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    pid, _, started = rest.partition(":")
    try:
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except (ValueError, psutil.Error):
        return False


USAGE_RECORD_SECONDS = 30.0


@dataclass
class LocalHead:
    cluster_id: uuid.UUID
    tenant: str | None
    head: SandboxedHead
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    client: RayJobs | None = None
    error: ClusterFailed | None = None
    task: asyncio.Task[None] | None = None
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0
    stopping: bool = False


class LocalClusters:
    """Starts, adopts, reuses and stops the tenants' sandboxed heads."""

    def __init__(
        self,
        *,
        sessionmaker: SessionMaker,
        data_dir: Path,
        private_paths: list[Path] | None = None,
        max_clusters: int,
        idle_seconds: float,
        num_cpus: int | None = None,
        startup_timeout: float = 120.0,
        spares: int = 0,
        on_change: Callable[[], None] = lambda: None,
    ):
        self.sessionmaker = sessionmaker
        self.data_dir = data_dir
        self.private_paths = list(private_paths or [])  # hidden from heads besides the usual places
        self.max_clusters = max_clusters
        self.idle_seconds = idle_seconds
        self.num_cpus = num_cpus
        self.startup_timeout = startup_timeout
        self.owner = owner_id()
        self._by_tenant: dict[str, LocalHead] = {}
        self._by_id: dict[uuid.UUID, LocalHead] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        # Heads that failed to start, kept so the jobs placed on them learn why.
        self._failed: dict[uuid.UUID, LocalHead] = {}
        self.on_change = on_change
        self._used: set[uuid.UUID] = set()  # heads with active jobs since the registry was last told
        self._usage_recorded = float("-inf")
        self.spares = spares
        self._closing = False
        self._start_slots = asyncio.Semaphore(START_CONCURRENCY)

    # --- what the router asks -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        heads = list(self._by_id.values())
        starting = sum(1 for h in heads if not h.ready.is_set())
        idle = sum(1 for h in heads if h.ready.is_set() and h.active == 0)
        return {"starting": starting, "running": len(heads) - starting - idle, "idle": idle}

    def knows(self, cluster_id: uuid.UUID) -> bool:
        return cluster_id in self._by_id

    def place(self, tenant: str) -> uuid.UUID:
        """The tenant's head (started now if it has none); ClusterWait when none can be had at the cap."""
        entry = self._by_tenant.get(tenant)
        if entry is not None and not entry.stopping and entry.error is None:
            entry.last_used = time.monotonic()
            entry.active += 1
            return entry.cluster_id
        if entry is not None:
            self._forget(entry)
        spare = self._take_spare(tenant)
        if spare is not None:
            spare.active += 1
            return spare.cluster_id
        if len(self._by_id) >= self.max_clusters:
            victim = self._least_recently_used_idle()
            if victim is None:
                raise ClusterWait(
                    f"waiting for a Ray cluster: all {self.max_clusters} tenant clusters are busy "
                    "(GATEWAY_MAX_CLUSTERS); it starts when one is free"
                )
            logger.info("stopping the idle Ray cluster of %s to make room (at GATEWAY_MAX_CLUSTERS)", victim.tenant)
            self._stop_later(victim)
        entry = self._new_head(tenant)
        entry.active += 1
        return entry.cluster_id

    def _spare(self) -> LocalHead | None:
        return next((e for e in self._by_id.values() if e.tenant is None and not e.stopping and e.error is None), None)

    def _take_spare(self, tenant: str) -> LocalHead | None:
        """Hand the pre-started head (no tenant yet, its own fresh token) to a new tenant."""
        spare = self._spare()
        if spare is None:
            return None
        spare.tenant = tenant
        spare.last_used = time.monotonic()
        self._by_tenant[tenant] = spare
        task = asyncio.create_task(self._record_tenant(spare), name=f"ray-head-assign-{spare.cluster_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        logger.info("handing the spare Ray head to %s", tenant)
        return spare

    async def _record_tenant(self, entry: LocalHead) -> None:
        await entry.ready.wait()
        with contextlib.suppress(Exception):
            async with self.sessionmaker.begin() as session:
                await repo.set_tenant(session, entry.cluster_id, entry.tenant)

    def keep_spare(self) -> None:
        """Keep `spares` heads started with no tenant, while there is room under the cap."""
        if self.spares <= 0 or self._closing or self._spare() is not None:
            return
        if any(not e.ready.is_set() for e in self._by_id.values()):
            return  # tenants' heads are starting: they come first
        if len(self._by_id) + 1 > self.max_clusters:
            return
        self._new_head(None)

    def client_now(self, cluster_id: uuid.UUID) -> RayJobs | None:
        entry = self._by_id.get(cluster_id)
        return entry.client if entry is not None and entry.ready.is_set() else None

    def is_starting(self, cluster_id: uuid.UUID) -> bool:
        entry = self._by_id.get(cluster_id)
        return entry is not None and not entry.ready.is_set() and entry.error is None

    async def client(self, cluster_id: uuid.UUID, *, timeout: float) -> RayJobs:
        """The head's client once it is up; ClusterFailed if it could not start, ClusterGone if it is unknown."""
        entry = self._by_id.get(cluster_id) or self._failed.get(cluster_id)
        if entry is None:
            raise ClusterGone(f"Ray cluster {cluster_id} is not running")
        await asyncio.wait_for(entry.ready.wait(), timeout=timeout)
        if entry.error is not None:
            raise entry.error
        assert entry.client is not None
        return entry.client

    def observe_active(self, counts: dict[uuid.UUID, int]) -> None:
        """Called by every status pass: active jobs per head; idle heads past their time are stopped."""
        now = time.monotonic()
        for entry in list(self._by_id.values()):
            if entry.ready.is_set() and not entry.head.alive():
                self._died(entry)
                continue
            entry.active = counts.get(entry.cluster_id, 0)
            if entry.active:
                entry.last_used = now
                self._used.add(entry.cluster_id)
            elif (
                entry.tenant is not None
                and entry.ready.is_set()
                and not entry.stopping
                and now - entry.last_used >= self.idle_seconds
            ):
                logger.info("stopping the Ray cluster of %s: idle for %.0f s", entry.tenant, now - entry.last_used)
                self._stop_later(entry)
        self.keep_spare()
        for state, count in self.counts().items():
            set_clusters(state, count)

    async def record_usage(self) -> None:
        """Write the heads used lately to the registry (at most every USAGE_RECORD_SECONDS): a restarted
        gateway, or a replica, then knows how long each has been idle."""
        if not self._used or time.monotonic() - self._usage_recorded < USAGE_RECORD_SECONDS:
            return
        used, self._used = list(self._used), set()
        self._usage_recorded = time.monotonic()
        async with self.sessionmaker.begin() as session:
            await repo.touch(session, used)

    # --- starting -----------------------------------------------------------------------------------------
    def _new_head(self, tenant: str | None) -> LocalHead:
        spec = new_spec(num_cpus=self.num_cpus, hidden=default_hidden(self.data_dir, self.private_paths))
        entry = LocalHead(cluster_id=uuid.uuid4(), tenant=tenant, head=SandboxedHead(spec))
        if tenant is not None:
            self._by_tenant[tenant] = entry
        self._by_id[entry.cluster_id] = entry
        entry.task = asyncio.create_task(self._start(entry), name=f"ray-head-{entry.cluster_id}")
        return entry

    async def _start(self, entry: LocalHead) -> None:
        spec = entry.head.spec
        started = time.monotonic()
        try:
            async with self.sessionmaker.begin() as session:
                await repo.add_local(
                    session,
                    cluster_id=entry.cluster_id,
                    tenant=entry.tenant,
                    token=spec.token,
                    address=spec.address,
                    details=spec.record(),
                    owner=self.owner,
                )
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    entry.head.startup_timeout = self.startup_timeout
                    async with self._start_slots:  # on a small machine, heads started all at once all start slowly
                        await entry.head.start()
                    break
                except HeadStartError as exc:
                    if exc.deterministic or attempt == START_ATTEMPTS:
                        raise
                    logger.warning("a Ray head did not start (%s); trying again on new ports", exc)
                    await asyncio.to_thread(shutil.rmtree, spec.temp_dir, True)
                    fresh = new_spec(num_cpus=self.num_cpus, hidden=spec.hidden)
                    release_port_block(spec.ports.get("gcs"))
                    spec.ports = fresh.ports
                    await asyncio.to_thread(shutil.rmtree, fresh.head_dir, True)
            async with self.sessionmaker.begin() as session:
                await repo.set_state(
                    session, entry.cluster_id, ClusterState.RUNNING, details=spec.record(), address=spec.address
                )
            entry.client = RayJobs(spec.address, headers=entry.head.headers)
            logger.info(
                "Ray cluster of %s up in %.1f s: %s (dir %s)",
                entry.tenant,
                time.monotonic() - started,
                spec.address,
                spec.head_dir,
            )
        except HeadStartError as exc:
            logger.error("could not start a Ray cluster for %s: %s", entry.tenant, exc)
            entry.error = ClusterFailed(f"could not start a Ray cluster for this job: {exc}", deterministic=True)
            await self._drop_record(entry)
        except asyncio.CancelledError:
            await entry.head.stop()
            await self._drop_record(entry)
            entry.error = ClusterFailed("the gateway stopped while the Ray cluster was starting", deterministic=False)
            raise
        except Exception as exc:
            logger.exception("could not start a Ray cluster for %s", entry.tenant)
            await entry.head.stop()
            await self._drop_record(entry)
            entry.error = ClusterFailed(f"could not start a Ray cluster for this job: {exc}", deterministic=False)
        finally:
            entry.ready.set()
            if entry.error is not None:
                self._forget(entry)
                self._failed[entry.cluster_id] = entry
                while len(self._failed) > 100:
                    self._failed.pop(next(iter(self._failed)))
            self.on_change()

    async def _drop_record(self, entry: LocalHead) -> None:
        with contextlib.suppress(Exception):
            async with self.sessionmaker.begin() as session:
                await repo.remove(session, entry.cluster_id)

    def _died(self, entry: LocalHead) -> None:
        spec = entry.head.spec
        output = ""
        with contextlib.suppress(OSError):
            output = (spec.head_dir / START_LOG).read_text(errors="replace")[-20000:]
        line, _, _ = root_cause(spec.temp_dir, output)
        logger.error("the Ray head of %s died: %s (its logs are kept in %s)", entry.tenant, line, spec.head_dir)
        self._forget(entry)
        entry.stopping = True
        task = asyncio.create_task(self._stop(entry, remove=False), name=f"ray-head-gone-{entry.cluster_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # --- stopping -----------------------------------------------------------------------------------------
    def _least_recently_used_idle(self) -> LocalHead | None:
        now = time.monotonic()
        idle = [
            e
            for e in self._by_id.values()
            if e.ready.is_set() and e.active == 0 and not e.stopping and now - e.last_used >= RECENT_SECONDS
        ]
        return min(idle, key=lambda e: e.last_used) if idle else None

    def _forget(self, entry: LocalHead) -> None:
        if entry.tenant is not None and self._by_tenant.get(entry.tenant) is entry:
            del self._by_tenant[entry.tenant]
        self._by_id.pop(entry.cluster_id, None)

    def _stop_later(self, entry: LocalHead) -> None:
        entry.stopping = True
        self._forget(entry)
        task = asyncio.create_task(self._stop(entry), name=f"ray-head-stop-{entry.cluster_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop(self, entry: LocalHead, *, remove: bool = True) -> None:
        with contextlib.suppress(Exception):
            async with self.sessionmaker.begin() as session:
                await repo.set_state(session, entry.cluster_id, ClusterState.STOPPING)
        if entry.client is not None:
            await entry.client.close()
        await entry.head.stop(remove=remove)
        await self._drop_record(entry)
        self.on_change()

    # --- adoption and shutdown ------------------------------------------------------------------------------
    async def adopt(self) -> int:
        """Take over the heads a previous gateway left running (it was killed); clean up the dead ones."""
        async with self.sessionmaker() as session:
            rows = await repo.local_clusters(session)
        adopted = 0
        for row in rows:
            if owned_elsewhere(row.owner):
                continue
            spec = HeadSpec.from_record(row.details, row.token or "")
            head = SandboxedHead(spec)
            alive = await asyncio.to_thread(head.alive)
            if alive and row.state == ClusterState.RUNNING.value and await head.answers():
                entry = LocalHead(cluster_id=row.id, tenant=row.tenant, head=head)
                if row.last_used_at is not None:  # its idle time goes on from where the registry saw it used
                    idle = (datetime.now(UTC) - row.last_used_at).total_seconds()
                    entry.last_used = time.monotonic() - max(0.0, idle)
                entry.client = RayJobs(spec.address, headers=head.headers)
                entry.ready.set()
                if row.tenant is not None:
                    self._by_tenant[row.tenant] = entry
                self._by_id[row.id] = entry
                async with self.sessionmaker.begin() as session:
                    await repo.set_state(session, row.id, ClusterState.RUNNING, owner=self.owner)
                adopted += 1
                logger.info("re-adopted the Ray cluster of %s left running by a previous gateway", row.tenant)
                continue
            logger.info("cleaning up the Ray cluster of %s left behind by a previous gateway", row.tenant)
            await head.stop()
            async with self.sessionmaker.begin() as session:
                await repo.remove(session, row.id)
        return adopted

    async def close(self, *, stop_heads: bool = True) -> None:
        """Cancel starts in progress; with `stop_heads`, stop every head (a graceful gateway shutdown)."""
        self._closing = True
        entries = list(self._by_id.values())
        for entry in entries:
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        await asyncio.gather(*(e.task for e in entries if e.task is not None), return_exceptions=True)
        if stop_heads:
            await asyncio.gather(*(self._stop(e) for e in entries if e.error is None), return_exceptions=True)
        elif entries:
            for entry in entries:
                if entry.client is not None:
                    await entry.client.close()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        self._by_id.clear()
        self._by_tenant.clear()
