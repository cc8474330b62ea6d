"""Health checks of the database, storage and engine, each bounded in time, for probes, status and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import metrics
from ..state import Engine
from ..storage import Storage, StorageError

logger = logging.getLogger(__name__)

READINESS_CHECK_SECONDS = 0.6
"""Each readiness check gets this long; they run at once, so the probe answers within Kubernetes' 1 s default."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One dependency's state: `problem` is None when it is fine."""

    name: str
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def _bounded(name: str, check: Awaitable[str | None], timeout: float) -> CheckResult:
    try:
        async with asyncio.timeout(timeout):
            return CheckResult(name, await check)
    except TimeoutError:
        return CheckResult(name, f"{name} did not answer within {timeout:g} s")
    except Exception as exc:  # a probe reports what failed; it never fails itself
        return CheckResult(name, f"{name} unreachable: {type(exc).__name__}")


async def _database(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return None


async def _storage(storage: Storage) -> str | None:
    try:
        await storage.check()
    except StorageError as exc:
        metrics.record_storage_error("check")
        return f"storage unreachable: {exc}"
    return None


async def check_database(engine: AsyncEngine, timeout: float = READINESS_CHECK_SECONDS) -> CheckResult:
    """Whether a pooled connection answers `SELECT 1` in time."""
    return await _bounded("database", _database(engine), timeout)


async def check_storage(storage: Storage, timeout: float = READINESS_CHECK_SECONDS) -> CheckResult:
    """Whether the storage backend answers its own check in time."""
    return await _bounded("storage", _storage(storage), timeout)


async def check_engine(engine: Engine | None, timeout: float = READINESS_CHECK_SECONDS) -> CheckResult | None:
    """Whether this process's engine reaches Ray; None when this process runs no engine."""
    if engine is None:
        return None
    return await _bounded("ray", engine.readiness_problem(), timeout)


async def check_api(db_engine: AsyncEngine, storage: Storage) -> list[CheckResult]:
    """What readiness needs (database and storage), checked concurrently."""
    results = await asyncio.gather(check_database(db_engine), check_storage(storage))
    return list(results)
