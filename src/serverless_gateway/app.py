"""The FastAPI application and the lifespan that owns the database, storage and execution engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from fastapi.routing import APIRoute

from . import __version__, metrics
from .api import dependencies, docs, files, job_bootstrap, jobs, openapi, programs, prometheus, system
from .api.body_guard import BodyGuard
from .auth import TokenCache
from .config import Settings
from .db import create_db_engine, create_read_sessionmaker, create_sessionmaker
from .errors import install_error_handlers
from .state import GatewayState
from .storage import open_storage
from .telemetry import TelemetryMiddleware

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0] if route.tags else 'gateway'}-{route.name}"


async def _collect_garbage(state: GatewayState) -> None:
    """The periodic garbage collection beside the engine (its workdirs included: this process unpacks them)."""
    from .engine.runtime import EngineRuntime
    from .services.retention import Workdirs, collect_periodically

    engine = state.engine
    cache = engine.dispatcher.workdirs if isinstance(engine, EngineRuntime) and engine.dispatcher else None
    workdirs = Workdirs(
        root=(state.settings.data_dir / "workdirs").resolve(),
        forget=cache.forget if cache is not None else lambda _sha256: None,
    )
    await collect_periodically(
        state.sessionmaker,
        state.storage,
        interval=lambda: state.settings.gc_interval_seconds,
        grace=lambda: timedelta(seconds=state.settings.gc_grace_seconds),
        workdirs=workdirs,
    )


def create_app(settings: Settings, *, start_engine: bool | None = None) -> FastAPI:
    """Build the app; the lifespan connects to PostgreSQL and storage and starts the engine."""
    run_engine = settings.run_engine if start_engine is None else start_engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db_engine = create_db_engine(settings)
        storage = await open_storage(settings)
        state = GatewayState(
            settings=settings,
            db_engine=db_engine,
            sessionmaker=create_sessionmaker(db_engine),
            read_sessionmaker=create_read_sessionmaker(db_engine),
            storage=storage,
            token_cache=TokenCache(settings.token_cache_seconds),
        )
        app.state.gateway = state
        collector: asyncio.Task[None] | None = None
        try:
            if run_engine:
                from .engine.runtime import start_engine as start

                with metrics.use(app_metrics):  # the engine's tasks, started here, record into this app's metrics
                    state.engine = await start(state)
                state.wake_dispatcher = state.engine.wake
                collector = asyncio.create_task(_collect_garbage(state), name="garbage-collection")
            yield
        finally:
            if collector is not None:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            if state.engine is not None:
                await state.engine.close()
            await storage.close()
            await db_engine.dispose()

    app = FastAPI(
        title="serverless-gateway",
        version=__version__,
        description="Run uploaded Python functions as jobs on Ray (Qiskit Serverless gateway API).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        generate_unique_id_function=_operation_id,
    )
    app_metrics = metrics.GatewayMetrics()
    app.state.metrics = app_metrics
    app.state.draining = False  # set on SIGTERM: readiness answers 503 while in-flight requests finish
    app.add_middleware(TelemetryMiddleware, metrics=app_metrics)
    install_error_handlers(app)
    app.add_middleware(BodyGuard)
    if settings.metrics:
        app.include_router(prometheus.router)
    for router in (
        programs.router,
        jobs.router,
        job_bootstrap.router,
        files.router,
        dependencies.router,
        system.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(system.router, include_in_schema=False)
    docs.install_docs(app)
    openapi.install_openapi(app)
    return app
