"""Bearer-token authentication and per-job tokens (the access rules live in `repositories/access.py`)."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import NotFound, Unauthorized
from .models import (
    ACTIVE_STATUSES,
    ApiToken,
    Job,
    User,
)

USER_TOKEN_PREFIX = "gw_"
TOKEN_USE_RESOLUTION = timedelta(minutes=1)
"""`api_token.last_used_at` is rewritten at most this often, so a busy token does not cost a write per request."""
JOB_TOKEN_PREFIX = "gwjob_"
MAX_TOKEN_LENGTH = 512
"""Longer bearer values are refused unhashed."""


def new_user_token() -> str:
    return USER_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_job_token() -> str:
    return JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)


BOOTSTRAP_PREFIX = "gwboot_"


def new_bootstrap_code() -> str:
    """A one-time code a job's launcher trades for its token, arguments and env vars (see api/job_bootstrap.py)."""
    return BOOTSTRAP_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are stored only as their SHA-256 hex digest."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, or a running job acting for its author (then `job_id` is set)."""

    user_id: uuid.UUID
    username: str
    job_id: uuid.UUID | None = None
    token_id: uuid.UUID | None = None
    expires_at: datetime | None = None

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
        """The principal checked less than the TTL ago, unless its token has expired since."""
        if self._ttl <= 0:
            return None
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        expires_at = entry[1].expires_at
        if entry[0] < time.monotonic() or (expires_at is not None and expires_at <= datetime.now(UTC)):
            self._entries.pop(token_hash, None)
            return None
        return entry[1]

    def lookup(self, token: str) -> Principal | None:
        """The cached principal of a user token; None for a job token (never cached: its job may end any time)."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.startswith(JOB_TOKEN_PREFIX):
            return None
        return self.get(hash_token(token))

    def put(self, token_hash: str, principal: Principal) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[token_hash] = (time.monotonic() + self._ttl, principal)


async def authenticate(session: AsyncSession, token: str, cache: TokenCache) -> Principal:
    """Resolve a bearer token to a principal, or raise 401."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized()
    digest = hash_token(token)
    if token.startswith(JOB_TOKEN_PREFIX):
        row = (
            await session.execute(
                select(Job.id, User.id, User.username)
                .join(User, User.id == Job.author_id)
                .where(Job.token_hash == digest, Job.status.in_(ACTIVE_STATUSES), User.disabled.is_(False))
            )
        ).first()
        if row is None:
            raise Unauthorized("Invalid token, or its job has ended.")
        return Principal(user_id=row[1], username=row[2], job_id=row[0])
    cached = cache.get(digest)
    if cached is not None:
        return cached
    found = (
        await session.execute(
            select(ApiToken, User.username, User.disabled)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == digest)
        )
    ).first()
    if found is None:
        raise Unauthorized("Invalid token.")
    stored, username, disabled = found.tuple()
    now = datetime.now(UTC)
    if stored.revoked_at is not None:
        raise Unauthorized("This token was revoked.")
    if stored.expires_at is not None and stored.expires_at <= now:
        raise Unauthorized(f"This token expired at {stored.expires_at.isoformat(timespec='seconds')}.")
    if disabled:
        raise Unauthorized(f"User {username!r} is disabled.")
    if stored.last_used_at is None or stored.last_used_at < now - TOKEN_USE_RESOLUTION:
        await _record_token_use(session, stored.id)
    principal = Principal(user_id=stored.user_id, username=username, token_id=stored.id, expires_at=stored.expires_at)
    cache.put(digest, principal)
    return principal


async def authenticate_request(sessions: Callable[[], AsyncSession], token: str, cache: TokenCache) -> Principal:
    """`authenticate` for a request: a cached user token costs no session at all; otherwise a short session of
    its own checks the token (and stamps its use) and is gone before the request's work begins."""
    cached = cache.lookup(token)
    if cached is not None:
        return cached
    async with sessions() as session:
        principal = await authenticate(session, token, cache)
        await session.commit()  # the `last_used_at` stamp, when one was due
    return principal


async def _record_token_use(session: AsyncSession, token_id: uuid.UUID) -> None:
    """Stamp `last_used_at`; skipped when another request holds the row, so no request waits on it."""
    stale = or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < func.now() - TOKEN_USE_RESOLUTION)
    claimable = select(ApiToken.id).where(ApiToken.id == token_id, stale).with_for_update(skip_locked=True)
    stamp = update(ApiToken).where(ApiToken.id.in_(claimable)).values(last_used_at=func.now())
    await session.execute(stamp.execution_options(synchronize_session=False))
