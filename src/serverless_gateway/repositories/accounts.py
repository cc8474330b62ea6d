"""SQL for users, tokens, groups and providers."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import ApiToken, Group, GroupMembership, Provider, ProviderAdminGroup, User


async def get_user_by_name(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(select(User).where(User.username == username))


async def add_user(session: AsyncSession, username: str) -> User:
    user = User(id=uuid.uuid4(), username=username)
    session.add(user)
    await session.flush()
    return user


async def add_token(session: AsyncSession, user_id: uuid.UUID, token_hash: str) -> ApiToken:
    token = ApiToken(id=uuid.uuid4(), user_id=user_id, token_hash=token_hash)
    session.add(token)
    await session.flush()
    return token


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
