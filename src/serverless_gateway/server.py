"""`serverless-gateway serve`: database, migrations, a local Ray head if needed, then uvicorn until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from contextlib import ExitStack
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from . import __version__
from .app import create_app
from .config import Settings
from .db import create_engine, create_sessionmaker
from .embedded_db import embedded_postgres
from .errors import NotFound
from .schema import upgrade_database
from .services import accounts

if TYPE_CHECKING:
    from .engine.local_ray import LocalRayHead

logger = logging.getLogger(__name__)

DEV_USER = "dev"
GRACEFUL_SHUTDOWN_SECONDS = 10
RAY_START_ATTEMPTS = 2


class ServeError(RuntimeError):
    """`serve` cannot go on; the message is for the operator."""


class ShutdownSignals:
    """SIGINT/SIGTERM/SIGHUP outside uvicorn's own handling: ask the server (or the start-up) to stop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.server: uvicorn.Server | None = None

    def install(self) -> None:
        # SIGHUP too (a closed terminal): uvicorn leaves it alone, and dying on it would strand the Ray head.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises the signal it handled once it has shut down; that lands here and only records it.
        if sig == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for a slow start-up step
        self.received = sig
        if self.server is not None:
            self.server.should_exit = True

    @property
    def requested(self) -> bool:
        return self.received is not None


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen before anything slow starts, so a busy port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def default_public_url(host: str, port: int) -> str:
    """Where jobs on this machine reach the gateway: a wildcard address becomes the loopback address."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def ensure_dev_user(database_url: str) -> str | None:
    """Create the `dev` user if it does not exist yet; its token, or None when it already existed."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            try:
                await accounts.require_user(session, DEV_USER)
                return None
            except NotFound:
                _, token = await accounts.create_user(session, username=DEV_USER)
                return token
    finally:
        await engine.dispose()


def print_dev_token(token: str) -> None:
    bar = "=" * 78
    sys.stdout.write(
        f"{bar}\n"
        f"Created the user '{DEV_USER}' on the embedded database. Its API token, shown only this once:\n\n"
        f"    {token}\n\n"
        f"Use it as 'Authorization: Bearer <token>'. Another one: serverless-gateway token create {DEV_USER}\n"
        f"{bar}\n"
    )
    sys.stdout.flush()


def _local_ray_head(settings: Settings) -> LocalRayHead | None:
    try:
        from .engine.local_ray import LocalRayHead
    except ImportError:
        logger.warning("no local Ray head support in this build: set GATEWAY_RAY_ADDRESS to use a Ray cluster")
        return None
    return LocalRayHead((settings.data_dir / "ray").resolve())


async def _start_ray_head(head: LocalRayHead, signals: ShutdownSignals) -> str:
    """Start the head; a second try rides out a start that timed out on a busy machine."""
    from .engine.local_ray import RayStartError

    logger.info("starting a local Ray head (GATEWAY_RAY_ADDRESS is unset)")
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            return await head.start()
        except RayStartError as exc:
            if attempt < RAY_START_ATTEMPTS and not signals.requested:
                logger.warning("the local Ray head did not start (%s); trying again", exc)
                continue
            logger.error("%s", exc)
    raise ServeError("cannot start a local Ray head (see above); set GATEWAY_RAY_ADDRESS to use a Ray cluster")


async def _serve_http(settings: Settings, sock: socket.socket, signals: ShutdownSignals) -> None:
    config = uvicorn.Config(
        create_app(settings),
        lifespan="on",
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    signals.server = server
    host, port = sock.getsockname()[:2]
    listening = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    logger.info(
        "serverless-gateway %s listening on %s (API docs at /docs); jobs call it back at %s",
        __version__,
        listening,
        settings.public_url,
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        signals.server = None


async def _dispatch_only(settings: Settings, signals: ShutdownSignals) -> None:
    """The app's lifespan (database, storage, engine) without the HTTP server, until a signal."""
    app = create_app(settings, start_engine=True)
    async with app.router.lifespan_context(app):
        logger.info("dispatcher running for %s (no HTTP API here); stop it with SIGINT or SIGTERM", settings.public_url)
        while not signals.requested:
            await asyncio.sleep(0.2)
    logger.info("dispatcher stopped")


async def _run(settings: Settings, signals: ShutdownSignals, sock: socket.socket | None) -> None:
    """Start a local Ray head when the engine needs one, then serve (or only dispatch) until a signal."""
    needs_ray = settings.run_engine or sock is None
    ray_head = _local_ray_head(settings) if needs_ray and settings.ray_address is None else None
    try:
        if ray_head is not None:
            settings = settings.model_copy(update={"ray_address": await _start_ray_head(ray_head, signals)})
        if signals.requested:
            return
        if sock is None:
            await _dispatch_only(settings, signals)
        else:
            await _serve_http(settings, sock, signals)
    finally:
        if ray_head is not None:
            logger.info("stopping the local Ray head")
            await ray_head.stop()


def _prepare_database(settings: Settings, stack: ExitStack) -> Settings:
    """The configured database, else the embedded one (stopped when `stack` closes); migrated either way."""
    if settings.database_url is None:
        logger.info("starting the embedded PostgreSQL under %s", settings.data_dir / "postgres")
        url = stack.enter_context(embedded_postgres(settings.data_dir))
        settings = settings.model_copy(update={"database_url": url})
    assert settings.database_url is not None
    asyncio.run(upgrade_database(settings.database_url))
    return settings


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the gateway until SIGINT or SIGTERM, then stop what it started (Ray head, embedded PostgreSQL)."""
    signals = ShutdownSignals()
    signals.install()
    with ExitStack() as stack:
        sock = bind_socket(host, port)
        stack.callback(sock.close)
        embedded = settings.database_url is None
        settings = _prepare_database(settings, stack)
        assert settings.database_url is not None
        if embedded:
            token = asyncio.run(ensure_dev_user(settings.database_url))
            if token is not None:
                print_dev_token(token)
        if settings.public_url is None:
            settings = settings.model_copy(update={"public_url": default_public_url(host, sock.getsockname()[1])})
        if not signals.requested:
            asyncio.run(_run(settings, signals, sock))


def dispatch(settings: Settings) -> None:
    """Run only the engine (for scaling out beside API replicas that set GATEWAY_RUN_ENGINE=false)."""
    if settings.public_url is None:
        raise ServeError("the dispatcher needs GATEWAY_PUBLIC_URL: the URL where jobs reach a gateway API replica")
    signals = ShutdownSignals()
    signals.install()
    with ExitStack() as stack:
        settings = _prepare_database(settings, stack)
        if not signals.requested:
            asyncio.run(_run(settings, signals, None))
