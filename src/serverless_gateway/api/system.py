"""Version and health probes (no authentication), and the authenticated status of the dependencies."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..deps import PrincipalDep, StateDep
from ..errors import error_responses
from ..services import health
from .routing import SlashRouter

logger = logging.getLogger(__name__)
router = SlashRouter(tags=["system"])


class VersionOut(BaseModel):
    version: str


class ProbeOut(BaseModel):
    status: str
    message: str | None = None
    down: list[str] | None = Field(default=None, description="The dependencies that are down (database, storage, ray).")


@router.get("/version/", response_model=VersionOut, summary="Gateway version")
async def version() -> VersionOut:
    return VersionOut(version=__version__)


@router.get("/liveness/", response_model=ProbeOut, summary="Liveness probe")
async def liveness() -> ProbeOut:
    return ProbeOut(status="alive")


@router.get(
    "/readiness/",
    response_model=ProbeOut,
    summary="Readiness probe: database and storage (not Ray), within 1 s",
    description="Unauthenticated, so it names only the dependencies that are down; the reasons go to the log.",
    responses={503: {"model": ProbeOut, "description": "A dependency is down, or the process is shutting down"}},
)
async def readiness(request: Request, state: StateDep) -> ProbeOut | JSONResponse:
    if getattr(request.app.state, "draining", False):
        body = ProbeOut(status="unavailable", message="shutting down")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    failed = [check for check in await health.check_api(state.db_engine, state.storage) if check.problem]
    if failed:
        logger.warning("not ready: %s", "; ".join(f"{check.name}: {check.problem}" for check in failed))
        body = ProbeOut(status="unavailable", message="not ready", down=[check.name for check in failed])
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return ProbeOut(status="ready")


class DependencyOut(BaseModel):
    status: Literal["ok", "unavailable", "not_running"]
    message: str | None = None


class StatusOut(BaseModel):
    """The state of this replica's dependencies; Ray's is reported here, not in readiness."""

    database: DependencyOut
    storage: DependencyOut
    engine: DependencyOut
    isolation: str | None = Field(
        default=None, description="How this replica's engine keeps users' jobs apart (none when it runs no engine)."
    )


def _dependency(check: health.CheckResult | None) -> DependencyOut:
    if check is None:
        return DependencyOut(status="not_running", message="this process runs no engine (GATEWAY_RUN_ENGINE=false)")
    if check.ok:
        return DependencyOut(status="ok")
    return DependencyOut(status="unavailable", message=check.problem)


@router.get(
    "/status/",
    response_model=StatusOut,
    summary="Database, storage and engine (Ray) state of this replica",
    responses=error_responses(401),
)
async def status(state: StateDep, _: PrincipalDep) -> StatusOut:
    database, storage, engine = await asyncio.gather(
        health.check_database(state.db_engine),
        health.check_storage(state.storage),
        health.check_engine(state.engine),
    )
    isolation = state.engine.isolation if state.engine is not None else None
    return StatusOut(
        database=_dependency(database), storage=_dependency(storage), engine=_dependency(engine), isolation=isolation
    )
