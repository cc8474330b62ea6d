"""`GET /metrics`: the app's Prometheus metrics, behind `GATEWAY_METRICS_TOKEN` when one is set."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from fastapi import APIRouter, Request, Response

from ..errors import Unauthorized
from ..metrics import CONTENT_TYPE, GatewayMetrics
from ..repositories.jobs import count_active_by_status
from ..services import health
from ..state import GatewayState

logger = logging.getLogger(__name__)

router = APIRouter()

COUNT_TIMEOUT_SECONDS = 2.0


def _authorize(request: Request, state: GatewayState) -> None:
    expected = state.settings.metrics_token
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized("A valid metrics token is needed: Authorization: Bearer <GATEWAY_METRICS_TOKEN>.")


async def _refresh(metrics: GatewayMetrics, state: GatewayState) -> None:
    """Read the active-job counts and the engine's health, at most every few seconds; keep the old on failure."""
    now = time.monotonic()
    if not metrics.counts_stale(now):
        return
    try:
        async with asyncio.timeout(COUNT_TIMEOUT_SECONDS), state.sessionmaker() as session:
            counts = await count_active_by_status(session)
    except Exception as exc:  # a scrape shows the last counts rather than failing
        logger.warning("metrics: cannot count jobs: %s", type(exc).__name__)
    else:
        metrics.set_job_counts(counts, now)
    engine = await health.check_engine(state.engine)
    if engine is not None:
        metrics.engine_up.set(1 if engine.ok else 0)


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    metrics: GatewayMetrics = request.app.state.metrics
    _authorize(request, state)
    await _refresh(metrics, state)
    return Response(metrics.render(), media_type=CONTENT_TYPE)
