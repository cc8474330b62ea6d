"""`Annotated` dependency aliases, so endpoint signatures read like prose."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from .auth import Principal, authenticate
from .config import Settings
from .db import session_scope
from .errors import Forbidden, NotFound, Unauthorized
from .state import GatewayState
from .storage import Storage


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(state.sessionmaker):
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_storage(state: StateDep) -> Storage:
    return state.storage


StorageDep = Annotated[Storage, Depends(get_storage)]

bearer_scheme = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer <token>`.")


async def get_principal(
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    return await authenticate(session, credentials.credentials, state.token_cache)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
"""A user, or a job acting with its job token (restricted to that job's endpoints)."""


async def get_user(principal: PrincipalDep) -> Principal:
    if principal.is_job:
        raise Forbidden("A job token can only call its own job's endpoints.")
    return principal


UserDep = Annotated[Principal, Depends(get_user)]
"""A user calling with its own API token."""


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """Path ids that are not UUIDs cannot name anything: answer 404 like any unknown id."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} not found.") from None
