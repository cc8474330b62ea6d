"""The FastAPI application and the lifespan that owns the database, storage and execution engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from . import __version__
from .api import dependencies, docs, files, jobs, openapi, programs, system
from .auth import TokenCache
from .config import Settings
from .db import create_engine, create_sessionmaker
from .errors import install_error_handlers
from .state import GatewayState
from .storage import open_storage

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0] if route.tags else 'gateway'}-{route.name}"


def create_app(settings: Settings, *, start_engine: bool | None = None) -> FastAPI:
    """Build the app; the lifespan connects to PostgreSQL and storage and starts the engine."""
    run_engine = settings.run_engine if start_engine is None else start_engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.database_url is None:
            raise RuntimeError("GATEWAY_DATABASE_URL must be resolved before the app starts")
        storage = await open_storage(settings)
        db_engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        state = GatewayState(
            settings=settings,
            db_engine=db_engine,
            sessionmaker=create_sessionmaker(db_engine),
            storage=storage,
            token_cache=TokenCache(settings.token_cache_seconds),
        )
        app.state.gateway = state
        try:
            if run_engine:
                from .engine.runtime import start_engine as start

                state.engine = await start(state)
                state.wake_dispatcher = state.engine.wake
            yield
        finally:
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
    install_error_handlers(app)
    for router in (programs.router, jobs.router, files.router, dependencies.router, system.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(system.router, include_in_schema=False)
    docs.install_docs(app)
    openapi.install_openapi(app)
    return app
