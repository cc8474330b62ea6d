"""Users, tokens, groups and providers: what the CLI and the tests create."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import hash_token, new_user_token
from ..errors import BadRequest, Conflict, NotFound
from ..models import ApiToken, Group, Provider, User
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


async def create_token(session: AsyncSession, *, user: User, expires_in: timedelta | None = None) -> str:
    """A new API token for `user`, valid for `expires_in` (None: until revoked); the plaintext is returned once."""
    token = new_user_token()
    expires_at = None if expires_in is None else datetime.now(UTC) + expires_in
    await repo.add_token(session, user.id, hash_token(token), expires_at=expires_at)
    return token


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What an operator may know of a token: never its secret (only its hash is stored anyway)."""

    id: uuid.UUID
    created: datetime
    last_used: datetime | None
    expires: datetime | None
    revoked: datetime | None
    user_disabled: bool = False

    @property
    def state(self) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= datetime.now(UTC):
            return "expired"
        return "user disabled" if self.user_disabled else "active"


def _token_info(token: ApiToken, *, user_disabled: bool = False) -> TokenInfo:
    return TokenInfo(
        id=token.id,
        created=token.created_at,
        last_used=token.last_used_at,
        expires=token.expires_at,
        revoked=token.revoked_at,
        user_disabled=user_disabled,
    )


async def list_tokens(session: AsyncSession, *, username: str) -> list[TokenInfo]:
    user = await require_user(session, username)
    return [_token_info(token, user_disabled=user.disabled) for token in await repo.list_tokens(session, user.id)]


async def revoke_token(session: AsyncSession, *, token_id: str) -> TokenInfo:
    """Revoke a token by its id; it stops working within the token cache's TTL."""
    try:
        parsed = uuid.UUID(token_id)
    except ValueError:
        raise BadRequest(f"{token_id!r} is not a token id (a UUID, as `token list` shows)") from None
    revoked = await repo.revoke_token(session, parsed)
    if revoked is None:
        raise NotFound(f"no token with id {token_id}")
    return _token_info(revoked)


async def set_user_disabled(session: AsyncSession, *, username: str, disabled: bool) -> None:
    """Disable a user (every token of theirs, and their running jobs' tokens, stop working) or enable it again."""
    user = await require_user(session, username)
    await repo.set_user_disabled(session, user.id, disabled)


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


_LISTINGS = {
    "users": repo.list_users,
    "groups": repo.list_groups,
    "providers": repo.list_providers,
}


async def listing(session: AsyncSession, kind: str, *, provider: str | None = None) -> list[dict[str, Any]]:
    """What `serverless-gateway user|group|provider list` and `program grants` show, as JSON-ready rows."""
    if kind == "grants":
        if provider is not None:
            await require_provider(session, provider)
        return await repo.list_program_grants(session, provider=provider)
    return await _LISTINGS[kind](session)
