"""Version and health probes; no authentication."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from .. import __version__
from ..deps import StateDep
from ..storage import StorageUnavailable
from .routing import SlashRouter

router = SlashRouter(tags=["system"])


class VersionOut(BaseModel):
    version: str


class ProbeOut(BaseModel):
    status: str
    message: str | None = None


@router.get("/version/", response_model=VersionOut, summary="Gateway version")
async def version() -> VersionOut:
    return VersionOut(version=__version__)


@router.get("/liveness/", response_model=ProbeOut, summary="Liveness probe")
async def liveness() -> ProbeOut:
    return ProbeOut(status="alive")


@router.get(
    "/readiness/",
    response_model=ProbeOut,
    summary="Readiness probe: database, storage and Ray",
    responses={503: {"model": ProbeOut, "description": "A dependency is down"}},
)
async def readiness(state: StateDep) -> ProbeOut | JSONResponse:
    problems: list[str] = []
    try:
        async with asyncio.timeout(3):
            async with state.db_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
    try:
        async with asyncio.timeout(3):
            await state.storage.check()
    except (StorageUnavailable, TimeoutError) as exc:
        problems.append(f"storage unreachable: {exc or type(exc).__name__}")
    if state.engine is not None:
        ray_problem = await state.engine.readiness_problem()
        if ray_problem:
            problems.append(ray_problem)
    if problems:
        body = ProbeOut(status="unavailable", message="; ".join(problems))
        return JSONResponse(body.model_dump(), status_code=503)
    return ProbeOut(status="ready")
