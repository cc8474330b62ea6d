"""Operator-run (static) Ray clusters: add, assign to a user, group or provider, list, remove."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import BadRequest, Conflict, NotFound
from ..models import ClusterAssignment, ClusterKind, ClusterState, Group, Provider, RayCluster, User


def read_token_file(path: Path) -> str:
    """The cluster's Ray auth token: the file's first line (RAY_AUTH_TOKEN of that cluster)."""
    try:
        lines = path.read_text().strip().splitlines()
    except OSError as exc:
        raise BadRequest(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not lines or not lines[0].strip():
        raise BadRequest(f"the token file {path} is empty")
    return lines[0].strip()


async def add_cluster(session: AsyncSession, *, name: str, address: str, token: str | None) -> RayCluster:
    if not address.startswith(("http://", "https://")):
        raise BadRequest("--address must be the cluster's dashboard URL (http://host:8265)")
    if await session.scalar(select(RayCluster.id).where(RayCluster.name == name)) is not None:
        raise Conflict(f"a cluster named {name!r} exists already")
    cluster = RayCluster(
        kind=ClusterKind.STATIC.value,
        name=name,
        address=address.rstrip("/"),
        token=token,
        state=ClusterState.RUNNING.value,
    )
    session.add(cluster)
    await session.flush()
    return cluster


async def _static(session: AsyncSession, name: str) -> RayCluster:
    cluster = await session.scalar(
        select(RayCluster).where(RayCluster.name == name, RayCluster.kind == ClusterKind.STATIC.value)
    )
    if cluster is None:
        raise NotFound(f"no cluster named {name!r} (see `serverless-gateway cluster list`)")
    return cluster


async def assign_cluster(
    session: AsyncSession, *, name: str, user: str | None, group: str | None, provider: str | None
) -> str:
    """Route a user's, a group's members' or a provider's jobs to the cluster (replacing an earlier assignment)."""
    cluster = await _static(session, name)
    if user is not None:
        target = await session.scalar(select(User.id).where(User.username == user))
        column, what = ClusterAssignment.user_id, f"user {user!r}"
    elif group is not None:
        target = await session.scalar(select(Group.id).where(Group.name == group))
        column, what = ClusterAssignment.group_id, f"group {group!r}"
    else:
        target = await session.scalar(select(Provider.id).where(Provider.name == provider))
        column, what = ClusterAssignment.provider_id, f"provider {provider!r}"
    if target is None:
        raise NotFound(f"{what} does not exist")
    existing = await session.scalar(select(ClusterAssignment).where(column == target))
    if existing is not None:
        existing.cluster_id = cluster.id
    else:
        session.add(ClusterAssignment(cluster_id=cluster.id, **{column.key: target}))
    await session.flush()
    return what


async def list_clusters(session: AsyncSession) -> list[dict[str, Any]]:
    """Every cluster of the registry with what runs on it; never a token."""
    counts = dict(
        (
            await session.execute(
                select(ClusterAssignment.cluster_id, func.count()).group_by(ClusterAssignment.cluster_id)
            )
        ).all()
    )
    rows = (await session.scalars(select(RayCluster).order_by(RayCluster.kind, RayCluster.created_at))).all()
    return [
        {
            "name": row.name or "",
            "kind": row.kind,
            "tenant": row.tenant or "",
            "address": row.address or "",
            "state": row.state,
            "assignments": int(counts.get(row.id, 0)),
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else "",
            "token": "set" if row.token else "none",
        }
        for row in rows
    ]


async def shared_static_clusters(session: AsyncSession) -> list[str]:
    """Names of operator clusters several tenants share: a group's or a provider's, or more than one assignment."""
    rows = (
        await session.execute(
            select(RayCluster.name, func.count(), func.count(ClusterAssignment.user_id))
            .join(ClusterAssignment, ClusterAssignment.cluster_id == RayCluster.id)
            .group_by(RayCluster.name)
        )
    ).all()
    return sorted(str(name) for name, assignments, users in rows if assignments > 1 or users < assignments)


async def remove_cluster(session: AsyncSession, *, name: str) -> None:
    await session.delete(await _static(session, name))
    await session.flush()
