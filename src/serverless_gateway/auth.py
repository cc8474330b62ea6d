"""Bearer-token authentication, per-job tokens and the access rules for programs, jobs and files."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import NotFound, Unauthorized
from .models import (
    ACTIVE_STATUSES,
    AccessLevel,
    ApiToken,
    GroupMembership,
    Job,
    Program,
    ProgramAccess,
    ProviderAdminGroup,
    User,
)

USER_TOKEN_PREFIX = "gw_"
JOB_TOKEN_PREFIX = "gwjob_"


def new_user_token() -> str:
    return USER_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_job_token() -> str:
    return JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are stored only as their SHA-256 hex digest."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, or a running job acting for its author (then `job_id` is set)."""

    user_id: uuid.UUID
    username: str
    job_id: uuid.UUID | None = None

    @property
    def is_job(self) -> bool:
        return self.job_id is not None

    def check_job(self, job_id: uuid.UUID) -> None:
        """A job token reaches only its own job; anything else looks like it does not exist."""
        if self.job_id is not None and self.job_id != job_id:
            raise NotFound("Job not found.")


class TokenCache:
    """Remembers checked user tokens for a few seconds so hot endpoints skip one query."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000):
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token_hash: str) -> Principal | None:
        if self._ttl <= 0:
            return None
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(token_hash, None)
            return None
        return entry[1]

    def put(self, token_hash: str, principal: Principal) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[token_hash] = (time.monotonic() + self._ttl, principal)


async def authenticate(session: AsyncSession, token: str, cache: TokenCache) -> Principal:
    """Resolve a bearer token to a principal, or raise 401."""
    if not token or len(token) > 512:
        raise Unauthorized()
    digest = hash_token(token)
    if token.startswith(JOB_TOKEN_PREFIX):
        row = (
            await session.execute(
                select(Job.id, User.id, User.username)
                .join(User, User.id == Job.author_id)
                .where(Job.token_hash == digest, Job.status.in_(ACTIVE_STATUSES))
            )
        ).first()
        if row is None:
            raise Unauthorized("Invalid token, or its job has ended.")
        return Principal(user_id=row[1], username=row[2], job_id=row[0])
    cached = cache.get(digest)
    if cached is not None:
        return cached
    user_row = (
        await session.execute(
            select(User.id, User.username)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == digest)
        )
    ).first()
    if user_row is None:
        raise Unauthorized("Invalid token.")
    principal = Principal(user_id=user_row[0], username=user_row[1])
    cache.put(digest, principal)
    return principal


def _member_groups(user_id: uuid.UUID) -> Select[uuid.UUID]:
    return select(GroupMembership.group_id).where(GroupMembership.user_id == user_id)


def admin_provider_ids(user_id: uuid.UUID) -> Select[uuid.UUID]:
    """The providers whose admin groups hold this user."""
    return select(ProviderAdminGroup.provider_id).where(ProviderAdminGroup.group_id.in_(_member_groups(user_id)))


def program_visible(user_id: uuid.UUID) -> ColumnElement[bool]:
    """SQL condition: the user may see this program (own, administered provider, or a granted group)."""
    granted = exists().where(
        ProgramAccess.program_id == Program.id, ProgramAccess.group_id.in_(_member_groups(user_id))
    )
    return or_(
        and_(Program.provider_id.is_(None), Program.author_id == user_id),
        and_(Program.provider_id.is_not(None), Program.provider_id.in_(admin_provider_ids(user_id))),
        and_(Program.provider_id.is_not(None), granted),
    )


def program_runnable(user_id: uuid.UUID) -> ColumnElement[bool]:
    """SQL condition: the user may run this program."""
    granted = exists().where(
        ProgramAccess.program_id == Program.id,
        ProgramAccess.group_id.in_(_member_groups(user_id)),
        ProgramAccess.level == AccessLevel.RUN.value,
    )
    return or_(
        and_(Program.provider_id.is_(None), Program.author_id == user_id),
        and_(Program.provider_id.is_not(None), Program.provider_id.in_(admin_provider_ids(user_id))),
        and_(Program.provider_id.is_not(None), granted),
    )


async def is_provider_admin(session: AsyncSession, user_id: uuid.UUID, provider_id: uuid.UUID) -> bool:
    found = await session.scalar(
        select(
            exists()
            .where(ProviderAdminGroup.provider_id == provider_id)
            .where(ProviderAdminGroup.group_id.in_(_member_groups(user_id)))
        )
    )
    return bool(found)
