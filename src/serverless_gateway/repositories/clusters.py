"""SQL of the cluster registry: tenants' local heads and operators' static clusters with their assignments."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import ClusterAssignment, ClusterKind, ClusterState, GroupMembership, RayCluster


async def local_clusters(session: AsyncSession) -> list[RayCluster]:
    return list((await session.scalars(select(RayCluster).where(RayCluster.kind == ClusterKind.LOCAL.value))).all())


async def add_local(
    session: AsyncSession,
    *,
    cluster_id: uuid.UUID,
    tenant: str | None,
    token: str,
    address: str,
    details: dict[str, Any],
    owner: str,
) -> None:
    session.add(
        RayCluster(
            id=cluster_id,
            kind=ClusterKind.LOCAL.value,
            tenant=tenant,
            token=token,
            address=address,
            details=details,
            owner=owner,
            state=ClusterState.STARTING.value,
        )
    )
    await session.flush()


async def set_state(session: AsyncSession, cluster_id: uuid.UUID, state: ClusterState, **values: Any) -> None:
    await session.execute(update(RayCluster).where(RayCluster.id == cluster_id).values(state=state.value, **values))


async def touch(session: AsyncSession, cluster_ids: list[uuid.UUID]) -> None:
    if cluster_ids:
        now = datetime.now(UTC)
        await session.execute(update(RayCluster).where(RayCluster.id.in_(cluster_ids)).values(last_used_at=now))


async def remove(session: AsyncSession, cluster_id: uuid.UUID) -> None:
    await session.execute(delete(RayCluster).where(RayCluster.id == cluster_id))


async def static_cluster(session: AsyncSession, cluster_id: uuid.UUID) -> RayCluster | None:
    return await session.scalar(
        select(RayCluster).where(RayCluster.id == cluster_id, RayCluster.kind == ClusterKind.STATIC.value)
    )


async def assigned_cluster(
    session: AsyncSession, *, user_id: uuid.UUID, provider_id: uuid.UUID | None
) -> uuid.UUID | None:
    """The operator's cluster for this tenant: the provider's, else the user's, else one of the user's groups'."""
    groups = select(GroupMembership.group_id).where(GroupMembership.user_id == user_id)
    clauses = [ClusterAssignment.user_id == user_id, ClusterAssignment.group_id.in_(groups)]
    if provider_id is not None:
        clauses.append(ClusterAssignment.provider_id == provider_id)
    rows = (await session.execute(select(ClusterAssignment).where(or_(*clauses)))).scalars().all()

    def rank(row: ClusterAssignment) -> tuple[int, str]:
        if provider_id is not None and row.provider_id == provider_id:
            return (0, "")
        if row.user_id == user_id:
            return (1, "")
        return (2, str(row.group_id))

    if provider_id is not None and not any(row.provider_id == provider_id for row in rows):
        # A provider's function without a provider assignment never runs on a consumer's own cluster.
        return None
    ordered = sorted(rows, key=rank)
    return ordered[0].cluster_id if ordered else None


async def set_tenant(session: AsyncSession, cluster_id: uuid.UUID, tenant: str | None) -> None:
    await session.execute(update(RayCluster).where(RayCluster.id == cluster_id).values(tenant=tenant))
