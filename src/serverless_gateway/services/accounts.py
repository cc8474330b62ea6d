"""Users, tokens, groups and providers: what the CLI and the tests create."""

from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import hash_token, new_user_token
from ..errors import BadRequest, Conflict, NotFound
from ..models import Group, Provider, User
from ..repositories import accounts as repo

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,149}")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise BadRequest(f"invalid {kind} name {name!r}: use letters, digits and _ . @ + - (at most 150 characters)")


async def create_user(session: AsyncSession, *, username: str) -> tuple[User, str]:
    """A new user and its first API token (the plaintext is returned once, never stored)."""
    _check_name("user", username)
    if await repo.get_user_by_name(session, username) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = await repo.add_user(session, username)
    token = await create_token(session, user=user)
    return user, token


async def create_token(session: AsyncSession, *, user: User) -> str:
    token = new_user_token()
    await repo.add_token(session, user.id, hash_token(token))
    return token


async def require_user(session: AsyncSession, username: str) -> User:
    user = await repo.get_user_by_name(session, username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


async def create_group(session: AsyncSession, *, name: str) -> Group:
    _check_name("group", name)
    if await repo.get_group_by_name(session, name) is not None:
        raise Conflict(f"group {name!r} already exists")
    return await repo.add_group(session, name)


async def require_group(session: AsyncSession, name: str) -> Group:
    group = await repo.get_group_by_name(session, name)
    if group is None:
        raise NotFound(f"no group named {name!r}")
    return group


async def add_user_to_group(session: AsyncSession, *, username: str, group_name: str) -> None:
    user = await require_user(session, username)
    group = await require_group(session, group_name)
    await repo.add_membership(session, group.id, user.id)


async def create_provider(session: AsyncSession, *, name: str, admin_group: str) -> Provider:
    _check_name("provider", name)
    if await repo.get_provider_by_name(session, name) is not None:
        raise Conflict(f"provider {name!r} already exists")
    group = await require_group(session, admin_group)
    provider = await repo.add_provider(session, name)
    await repo.add_provider_admin_group(session, provider.id, group.id)
    return provider


async def require_provider(session: AsyncSession, name: str) -> Provider:
    provider = await repo.get_provider_by_name(session, name)
    if provider is None:
        raise NotFound(f"no provider named {name!r}")
    return provider
