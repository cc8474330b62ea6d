"""`Annotated` dependency aliases, so endpoint signatures read like prose."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from . import log_config
from .api.body_guard import PRINCIPAL_KEY
from .auth import Principal, authenticate_request
from .config import Settings
from .db import DriverTransaction, driver_scope, session_scope
from .errors import Forbidden, NotFound, Unauthorized
from .state import GatewayState
from .storage import Storage


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def get_state(request: Request) -> GatewayState:
    return state_of(request)


StateDep = Annotated[GatewayState, Depends(get_state)]


READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


# The dependencies below read the state from the request rather than through `StateDep`: FastAPI solves every
# sub-dependency again for each dependency that declares it (its cache only spares the call), and these are
# on every request's path.


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session: one transaction for a write; AUTOCOMMIT statements for a GET or HEAD."""
    state = state_of(request)
    maker = state.sessionmaker
    if request.method in READ_ONLY_METHODS and state.read_sessionmaker is not None:
        maker = state.read_sessionmaker
    async for session in session_scope(maker):
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_driver_transaction(request: Request) -> AsyncIterator[DriverTransaction]:
    async for transaction in driver_scope(state_of(request).db_engine):
        yield transaction


DriverTransactionDep = Annotated[DriverTransaction, Depends(get_driver_transaction, scope="function")]
"""The request's asyncpg transaction, for a hot write that bypasses SQLAlchemy (`db.driver_scope`)."""


async def get_settings(request: Request) -> Settings:
    return state_of(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_storage(request: Request) -> Storage:
    return state_of(request).storage


StorageDep = Annotated[Storage, Depends(get_storage)]

BEARER_DESCRIPTION = "An API token: `Authorization: Bearer <token>`."
bearer_scheme = HTTPBearer(auto_error=False, description=BEARER_DESCRIPTION)


async def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller, checked before the request's own session is used (a cached token needs none)."""
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if principal is None:  # else the body guard (or another dependency) authenticated this request already
        if credentials is None:
            raise Unauthorized()
        state = state_of(request)
        principal = await authenticate_request(state.read_sessions, credentials.credentials, state.token_cache)
        request.scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
    # Here, not in the body guard: the guard runs outside the request's log context.
    log_config.bind(user_id=principal.user_id, job_id=principal.job_id)
    return principal


class BearerCaller(HTTPBearer):
    """The caller of `Authorization: Bearer <token>` as one dependency, which OpenAPI still shows as the
    `HTTPBearer` scheme. (Built on `bearer_scheme` instead, it would be a chain of two or three: FastAPI solves
    each link again on every request, about 10 µs apiece.)"""

    def __init__(self, *, users_only: bool) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description=BEARER_DESCRIPTION)
        self.users_only = users_only

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal = await _caller(request, await super().__call__(request))
        if self.users_only and principal.is_job:
            raise Forbidden("A job token can only call its own job's endpoints.")
        return principal


PrincipalDep = Annotated[Principal, Depends(BearerCaller(users_only=False))]
"""A user, or a job acting with its job token (restricted to that job's endpoints)."""

UserDep = Annotated[Principal, Depends(BearerCaller(users_only=True))]
"""A user calling with its own API token."""


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """Path ids that are not UUIDs cannot name anything: answer 404 like any unknown id."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} not found.") from None
