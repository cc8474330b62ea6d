"""What the lifespan builds and every request reaches through `request.app.state.gateway`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .auth import TokenCache
from .config import Settings
from .db import SessionMaker
from .storage import Storage

if TYPE_CHECKING:
    from .engine.runtime import EngineRuntime


@dataclass
class GatewayState:
    settings: Settings
    db_engine: AsyncEngine
    sessionmaker: SessionMaker
    storage: Storage
    token_cache: TokenCache
    engine: EngineRuntime | None = None
    wake_dispatcher: Callable[[], None] = lambda: None
    extras: dict[str, Any] = field(default_factory=dict)
