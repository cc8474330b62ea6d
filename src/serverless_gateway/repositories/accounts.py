"""SQL for users, tokens, groups and providers, and the lists the admin CLI shows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import ApiToken, Group, GroupMembership, Program, ProgramAccess, Provider, ProviderAdminGroup, User


async def get_user_by_name(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(select(User).where(User.username == username))


async def add_user(session: AsyncSession, username: str) -> User:
    user = User(id=uuid.uuid4(), username=username)
    session.add(user)
    await session.flush()
    return user


async def add_token(
    session: AsyncSession, user_id: uuid.UUID, token_hash: str, *, expires_at: datetime | None = None
) -> ApiToken:
    token = ApiToken(id=uuid.uuid4(), user_id=user_id, token_hash=token_hash, expires_at=expires_at)
    session.add(token)
    await session.flush()
    return token


async def list_tokens(session: AsyncSession, user_id: uuid.UUID) -> Sequence[ApiToken]:
    """A user's API tokens, oldest first."""
    query = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at, ApiToken.id)
    return (await session.scalars(query)).all()


async def revoke_token(session: AsyncSession, token_id: uuid.UUID) -> ApiToken | None:
    """Mark the token revoked (a second revoke keeps the first time); None when there is no such token."""
    revoked = await session.scalar(
        update(ApiToken)
        .where(ApiToken.id == token_id)
        .values(revoked_at=func.coalesce(ApiToken.revoked_at, func.now()))
        .returning(ApiToken)
        .execution_options(synchronize_session=False)
    )
    return revoked


async def set_user_disabled(session: AsyncSession, user_id: uuid.UUID, disabled: bool) -> None:
    await session.execute(
        update(User).where(User.id == user_id).values(disabled=disabled).execution_options(synchronize_session=False)
    )


async def get_group_by_name(session: AsyncSession, name: str) -> Group | None:
    return await session.scalar(select(Group).where(Group.name == name))


async def add_group(session: AsyncSession, name: str) -> Group:
    group = Group(id=uuid.uuid4(), name=name)
    session.add(group)
    await session.flush()
    return group


async def add_membership(session: AsyncSession, group_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await session.execute(insert(GroupMembership).values(group_id=group_id, user_id=user_id).on_conflict_do_nothing())


async def get_provider_by_name(session: AsyncSession, name: str) -> Provider | None:
    return await session.scalar(select(Provider).where(Provider.name == name))


async def add_provider(session: AsyncSession, name: str) -> Provider:
    provider = Provider(id=uuid.uuid4(), name=name)
    session.add(provider)
    await session.flush()
    return provider


async def add_provider_admin_group(session: AsyncSession, provider_id: uuid.UUID, group_id: uuid.UUID) -> None:
    await session.execute(
        insert(ProviderAdminGroup).values(provider_id=provider_id, group_id=group_id).on_conflict_do_nothing()
    )


def _names(column: Any) -> Any:
    """The sorted, NULL-free array of `column` values in a group (empty when none)."""
    return func.coalesce(func.array_agg(aggregate_order_by(column, column)).filter(column.is_not(None)), text("'{}'"))


async def _with_group_names(
    session: AsyncSession, name: Any, owner: Any, link: Any
) -> list[tuple[str, str, list[str]]]:
    """(name, created, sorted group names) of each row of `name`'s table, joined to groups through `link`."""
    rows = await session.execute(
        select(name, name.table.c.created_at, _names(Group.name))
        .outerjoin(link, owner == name.table.c.id)
        .outerjoin(Group, Group.id == link.group_id)
        .group_by(name.table.c.id)
        .order_by(name)
    )
    return [(str(n), created.isoformat(), list(groups)) for n, created, groups in rows]


async def list_users(session: AsyncSession) -> list[dict[str, Any]]:
    """Every user with its groups, by name."""
    rows = await _with_group_names(session, User.username, GroupMembership.user_id, GroupMembership)
    return [{"name": name, "created": created, "groups": groups} for name, created, groups in rows]


async def list_groups(session: AsyncSession) -> list[dict[str, Any]]:
    """Every group with its members and the providers it administers, by name."""
    members = (
        select(func.coalesce(func.array_agg(aggregate_order_by(User.username, User.username)), text("'{}'")))
        .join(GroupMembership, GroupMembership.user_id == User.id)
        .where(GroupMembership.group_id == Group.id)
        .scalar_subquery()
    )
    providers = (
        select(func.coalesce(func.array_agg(aggregate_order_by(Provider.name, Provider.name)), text("'{}'")))
        .join(ProviderAdminGroup, ProviderAdminGroup.provider_id == Provider.id)
        .where(ProviderAdminGroup.group_id == Group.id)
        .scalar_subquery()
    )
    rows = await session.execute(select(Group.name, members, providers).order_by(Group.name))
    return [{"name": name, "members": list(users), "administers": list(admin)} for name, users, admin in rows]


async def list_providers(session: AsyncSession) -> list[dict[str, Any]]:
    """Every provider with its admin groups, by name."""
    rows = await _with_group_names(session, Provider.name, ProviderAdminGroup.provider_id, ProviderAdminGroup)
    return [{"name": name, "created": created, "admin_groups": groups} for name, created, groups in rows]


async def list_program_grants(session: AsyncSession, *, provider: str | None = None) -> list[dict[str, Any]]:
    """Which group may view or run which provider program (optionally of one provider)."""
    statement = (
        select(Provider.name, Program.title, Group.name, ProgramAccess.level)
        .join(Program, Program.id == ProgramAccess.program_id)
        .join(Provider, Provider.id == Program.provider_id)
        .join(Group, Group.id == ProgramAccess.group_id)
        .order_by(Provider.name, Program.title, Group.name)
    )
    if provider is not None:
        statement = statement.where(Provider.name == provider)
    rows = await session.execute(statement)
    return [{"provider": p, "program": t, "group": g, "level": level} for p, t, g, level in rows]
