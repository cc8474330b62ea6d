"""Which Ray cluster a job goes to, and the client to reach it: an operator's cluster assigned to the tenant,
else the shared `GATEWAY_RAY_ADDRESS` cluster, else the tenant's own sandboxed local head.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from ...db import SessionMaker
from ...repositories import clusters as repo
from ..ray_client import RayJobs
from . import ClusterGone, ClusterWait, Tenant
from .local import LocalClusters

ASSIGNMENT_CACHE_SECONDS = 5.0


class ClusterStatus(StrEnum):
    READY = "ready"
    STARTING = "starting"
    GONE = "gone"


class Clusters:
    """Routes tenants to clusters; `None` as a cluster id means the shared GATEWAY_RAY_ADDRESS cluster."""

    def __init__(self, *, sessionmaker: SessionMaker, shared: RayJobs | None, local: LocalClusters | None):
        self.sessionmaker = sessionmaker
        self.shared = shared
        self.local = local
        self._static: dict[uuid.UUID, RayJobs] = {}
        self._missing_static: dict[uuid.UUID, float] = {}
        self._assigned: dict[str, tuple[float, uuid.UUID | None]] = {}

    @property
    def configured(self) -> bool:
        """Always: operators' clusters can be added at any time (`serverless-gateway cluster add`)."""
        return True

    async def place(self, session: AsyncSession, tenant: Tenant) -> uuid.UUID | None:
        """The cluster for a tenant's next job; raises ClusterWait when it must wait (all clusters busy)."""
        assigned = await self._assignment(session, tenant)
        if assigned is not None and await self._load_static(session, assigned):
            return assigned
        if self.shared is not None:
            return None
        if self.local is not None:
            return self.local.place(tenant.key)
        raise ClusterWait("waiting for a Ray cluster: none is configured (set GATEWAY_RAY_ADDRESS)")

    async def _assignment(self, session: AsyncSession, tenant: Tenant) -> uuid.UUID | None:
        cached = self._assigned.get(tenant.key)
        if cached is not None and time.monotonic() - cached[0] < ASSIGNMENT_CACHE_SECONDS:
            return cached[1]
        found = await repo.assigned_cluster(session, user_id=tenant.user_id, provider_id=tenant.provider_id)
        self._assigned[tenant.key] = (time.monotonic(), found)
        return found

    async def _load_static(self, session: AsyncSession, cluster_id: uuid.UUID) -> bool:
        if cluster_id in self._static:
            return True
        row = await repo.static_cluster(session, cluster_id)
        if row is None or not row.address:
            return False
        headers = {"Authorization": f"Bearer {row.token}"} if row.token else None
        self._static[cluster_id] = RayJobs(row.address, headers=headers)
        return True

    async def resolve(self, cluster_ids: set[uuid.UUID | None]) -> None:
        """Load the operator clusters among these ids that this process has no client for yet."""
        unknown = [
            cid
            for cid in cluster_ids
            if cid is not None
            and cid not in self._static
            and not (self.local and self.local.knows(cid))
            and time.monotonic() - self._missing_static.get(cid, float("-inf")) > ASSIGNMENT_CACHE_SECONDS
        ]
        if not unknown:
            return
        async with self.sessionmaker() as session:
            for cid in unknown:
                if not await self._load_static(session, cid):
                    self._missing_static[cid] = time.monotonic()

    def status(self, cluster_id: uuid.UUID | None) -> ClusterStatus:
        if self.client_now(cluster_id) is not None:
            return ClusterStatus.READY
        if cluster_id is not None and self.local is not None and self.local.is_starting(cluster_id):
            return ClusterStatus.STARTING
        return ClusterStatus.GONE

    def client_now(self, cluster_id: uuid.UUID | None) -> RayJobs | None:
        if cluster_id is None:
            return self.shared
        if cluster_id in self._static:
            return self._static[cluster_id]
        return self.local.client_now(cluster_id) if self.local is not None else None

    async def client(self, cluster_id: uuid.UUID | None, *, timeout: float = 300.0) -> RayJobs:
        """The cluster's client, waiting while a local head starts; ClusterGone / ClusterFailed otherwise."""
        ready = self.client_now(cluster_id)
        if ready is not None:
            return ready
        if cluster_id is not None:
            await self.resolve({cluster_id})
            if cluster_id in self._static:
                return self._static[cluster_id]
            if self.local is not None:
                return await self.local.client(cluster_id, timeout=timeout)
        raise ClusterGone("the job's Ray cluster is not configured any more")

    def ready_clients(self) -> dict[uuid.UUID | None, RayJobs]:
        found: dict[uuid.UUID | None, RayJobs] = dict(self._static.items())
        if self.shared is not None:
            found[None] = self.shared
        return found

    def observe_active(self, counts: dict[uuid.UUID | None, int]) -> None:
        if self.local is not None:
            self.local.observe_active({cid: n for cid, n in counts.items() if cid is not None})

    async def record_usage(self) -> None:
        if self.local is not None:
            await self.local.record_usage()

    async def close(self) -> None:
        if self.local is not None:
            await self.local.close()
        for client in self._static.values():
            await client.close()
        if self.shared is not None:
            await self.shared.close()
