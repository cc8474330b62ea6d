"""What the lifespan builds and every request reaches through `request.app.state.gateway`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from .auth import TokenCache
from .config import Settings
from .db import SessionMaker
from .storage import Storage


class Engine(Protocol):
    """What the API layer may ask of the execution engine (implemented in `engine/runtime.py`)."""

    def wake(self) -> None:
        """A job was queued or a stop was requested: look for work now."""

    async def close(self) -> None: ...

    async def readiness_problem(self) -> str | None:
        """None when Ray is reachable, else a short reason for the readiness probe."""

    async def live_logs(self, job_id: uuid.UUID, submission_id: str) -> str | None:
        """Ray's current logs of a job that is PENDING or RUNNING; None when Ray cannot tell."""


@dataclass
class GatewayState:
    settings: Settings
    db_engine: AsyncEngine
    sessionmaker: SessionMaker
    storage: Storage
    token_cache: TokenCache
    engine: Engine | None = None
    wake_dispatcher: Callable[[], None] = lambda: None
    extras: dict[str, Any] = field(default_factory=dict)
