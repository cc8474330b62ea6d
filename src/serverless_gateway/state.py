"""What the lifespan builds and every request reaches through `request.app.state.gateway`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from .auth import TokenCache
from .config import Settings
from .db import SessionMaker
from .storage import Storage
from .storage.usage import SpaceUsage

if TYPE_CHECKING:
    from .engine.live_logs import LiveBytes


class Engine(Protocol):
    """What the API layer may ask of the execution engine (implemented in `engine/runtime.py`)."""

    isolation: str
    """How users' jobs are kept apart (sandboxed heads per tenant, or a loud warning that they are not)."""

    def wake(self) -> None:
        """A job was queued or a stop was requested: look for work now."""

    def job_ended(self, job_id: uuid.UUID, exit_code: int, *, result_in_log: bool = False) -> None:
        """A job's launcher reported that its entrypoint exited: finish the job without waiting for Ray."""

    async def close(self) -> None: ...

    async def readiness_problem(self) -> str | None:
        """None when Ray is reachable, else a short reason for the readiness probe."""

    async def live_logs(self, job_id: uuid.UUID, submission_id: str) -> str | None:
        """Ray's current logs of a job that is PENDING or RUNNING (their last 8 MiB); None when Ray cannot tell."""

    async def unstored_logs(self, job_id: uuid.UUID, submission_id: str) -> str | None:
        """The log of a job final on its launcher's word whose log is not stored yet (a moment after its end),
        read from Ray; None when Ray cannot tell."""

    async def live_log_bytes(self, job_id: uuid.UUID, submission_id: str, start: int, limit: int) -> LiveBytes | None:
        """Up to `limit` bytes of a running job's log from byte `start` (or the first still kept); None: unknown."""

    async def wait_live_log(self, job_id: uuid.UUID, submission_id: str, offset: int, timeout: float) -> None:
        """Return once a running job's log has grown past `offset`, or after `timeout` seconds."""


@dataclass
class GatewayState:
    settings: Settings
    db_engine: AsyncEngine
    sessionmaker: SessionMaker
    storage: Storage
    token_cache: TokenCache
    read_sessionmaker: SessionMaker | None = None
    """Sessions of read-only (GET/HEAD) requests, in AUTOCOMMIT; None: they use `sessionmaker` too."""
    engine: Engine | None = None
    wake_dispatcher: Callable[[], None] = lambda: None
    file_usage: SpaceUsage = field(default_factory=SpaceUsage)

    @property
    def read_sessions(self) -> SessionMaker:
        """Sessions for reads outside a request's own (a token look-up, a followed log): AUTOCOMMIT if there are."""
        return self.read_sessionmaker or self.sessionmaker
