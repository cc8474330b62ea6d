"""`serverless-gateway serve`: database, migrations, a local Ray head if needed, then uvicorn until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

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


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM first turns readiness to 503 and keeps serving for `drain_delay` seconds.

    A load balancer then stops sending new requests before the listener closes; uvicorn afterwards gives the
    requests in flight `timeout_graceful_shutdown` seconds. SIGINT and a second SIGTERM stop at once.
    """

    def __init__(self, config: uvicorn.Config, *, app: FastAPI, drain_delay: float, started_at: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_delay = drain_delay
        self.started_at = started_at
        self.exit_at: float | None = None
        self.drain_logged = False
        self.announced: str | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.draining = True
        if sig == signal.SIGTERM and self.drain_delay > 0 and self.exit_at is None and not self.should_exit:
            self.exit_at = time.monotonic() + self.drain_delay
            getattr(self, "_captured_signals", []).append(sig)  # uvicorn re-raises it once it has stopped
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if counter == 0 and self.announced is not None:
            logger.info("%s (start-up took %.1f s)", self.announced, time.monotonic() - self.started_at)
            self.announced = None
        if self.exit_at is not None and not self.should_exit:
            if not self.drain_logged:  # logged here, not in the signal handler, where logging could deadlock
                self.drain_logged = True
                remaining = max(0.0, self.exit_at - time.monotonic())
                logger.info("SIGTERM: readiness answers 503; closing the listener in %.1f s", remaining)
            if time.monotonic() >= self.exit_at:
                logger.info("closing the listener; in-flight requests have %s s", self.config.timeout_graceful_shutdown)
                self.should_exit = True
        return await super().on_tick(counter)


@contextmanager
def startup_step(what: str) -> Iterator[None]:
    """Log how long one start-up step took (the slow ones: database, migrations, Ray)."""
    began = time.monotonic()
    yield
    logger.info("start-up: %s in %.1f s", what, time.monotonic() - began)


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


DEV_TOKEN_FILE = "dev-token"


def announce_dev_token(token: str, data_dir: Path) -> None:
    """Show the new dev token once on a terminal; elsewhere (container logs) put it in a file only its owner reads."""
    if sys.stdout.isatty():
        bar = "=" * 78
        sys.stdout.write(
            f"{bar}\n"
            f"Created the user '{DEV_USER}' on the embedded database. Its API token, shown only this once:\n\n"
            f"    {token}\n\n"
            f"Use it as 'Authorization: Bearer <token>'. Another one: serverless-gateway token create {DEV_USER}\n"
            f"{bar}\n"
        )
        sys.stdout.flush()
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    path = (data_dir / DEV_TOKEN_FILE).resolve()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # a file left from before keeps no wider mode
        out.write(token + "\n")
    logger.warning(
        "Created the user '%s' on the embedded database; stdout is not a terminal, so its API token is in %s "
        "(readable only by this user)",
        DEV_USER,
        path,
    )


def _local_ray_head(settings: Settings) -> LocalRayHead | None:
    try:
        from .engine.local_ray import LocalRayHead
    except ImportError:
        logger.warning("no local Ray head support in this build: set GATEWAY_RAY_ADDRESS to use a Ray cluster")
        return None
    return LocalRayHead((settings.data_dir / "ray").resolve())


async def _start_ray_head(head: LocalRayHead, signals: ShutdownSignals) -> str:
    """Start the head (it retries a start that timed out on a busy machine, not a deterministic failure); a
    signal meanwhile stops the start at once."""
    from .engine.local_ray import RayStartError

    logger.info("starting a local Ray head (GATEWAY_RAY_ADDRESS is unset)")
    starting = asyncio.create_task(head.start(), name="local-ray-head-start")
    while not starting.done() and not signals.requested:
        await asyncio.wait({starting}, timeout=0.2)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, RayStartError):
            await starting
        raise ServeError("stopped while the local Ray head was starting")
    try:
        return starting.result()
    except RayStartError as exc:
        raise ServeError(f"cannot start a local Ray head: {exc}") from None


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (what uvicorn itself would pick), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_on_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on the loop of `event_loop_factory`: `serve` does not let uvicorn own the loop."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main)


async def _serve_http(settings: Settings, sock: socket.socket, signals: ShutdownSignals, started_at: float) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        http="auto",  # httptools when installed, else h11
        lifespan="on",
        log_config=None,  # logging is set up once, by log_config.configure_logging (text or JSON)
        log_level=settings.log_level.lower(),
        access_log=False,  # the telemetry middleware logs each request once, with its route and request id
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
    )
    config.load()
    server = DrainingServer(config, app=app, drain_delay=settings.shutdown_delay_seconds, started_at=started_at)
    signals.server = server
    host, port = sock.getsockname()[:2]
    listening = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    server.announced = (
        f"serverless-gateway {__version__} listening on {listening} (API docs at /docs); "
        f"jobs call it back at {settings.public_url}"
    )
    logger.info(
        "event loop %s, HTTP protocol %s",
        type(asyncio.get_running_loop()).__module__,
        config.http_protocol_class.__module__,
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


async def _run(settings: Settings, signals: ShutdownSignals, sock: socket.socket | None, started_at: float) -> None:
    """Start a local Ray head when the engine needs one, then serve (or only dispatch) until a signal."""
    needs_ray = settings.run_engine or sock is None
    ray_head = None
    if needs_ray and settings.ray_address is None:
        from .engine.clusters.isolation import NOT_ISOLATED, IsolationUnavailable, isolation_mode

        try:
            mode, why = isolation_mode(settings)
        except IsolationUnavailable as exc:
            raise ServeError(str(exc)) from None
        if mode == "shared":
            logger.warning("%s (%s). Install bubblewrap to isolate them; see docs/security.md", NOT_ISOLATED, why)
            ray_head = _local_ray_head(settings)
        else:
            logger.info("each tenant's jobs get a sandboxed Ray head of their own, started on demand")
    try:
        if ray_head is not None:
            with startup_step("local Ray head ready"):
                address = await _start_ray_head(ray_head, signals)
            settings = settings.model_copy(update={"ray_address": address})
        if signals.requested:
            return
        if sock is None:
            await _dispatch_only(settings, signals)
        else:
            await _serve_http(settings, sock, signals, started_at)
    finally:
        if ray_head is not None:
            logger.info("stopping the local Ray head")
            await ray_head.stop()


def _prepare_database(settings: Settings, stack: ExitStack) -> Settings:
    """The configured database, else the embedded one (stopped when `stack` closes); migrated either way."""
    if settings.database_url is None:
        logger.info("starting the embedded PostgreSQL under %s", settings.data_dir / "postgres")
        with startup_step("embedded PostgreSQL ready"):
            url = stack.enter_context(embedded_postgres(settings.data_dir))
        settings = settings.model_copy(update={"database_url": url})
    assert settings.database_url is not None
    with startup_step("database migrations applied"):
        asyncio.run(upgrade_database(settings.database_url))
    return settings


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the gateway until SIGINT or SIGTERM, then stop what it started (Ray head, embedded PostgreSQL)."""
    started_at = time.monotonic()
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
                announce_dev_token(token, settings.data_dir)
        if settings.public_url is None:
            settings = settings.model_copy(update={"public_url": default_public_url(host, sock.getsockname()[1])})
        if not signals.requested:
            run_on_event_loop(_run(settings, signals, sock, started_at))


def dispatch(settings: Settings) -> None:
    """Run only the engine (for scaling out beside API replicas that set GATEWAY_RUN_ENGINE=false)."""
    if settings.public_url is None:
        raise ServeError("the dispatcher needs GATEWAY_PUBLIC_URL: the URL where jobs reach a gateway API replica")
    started_at = time.monotonic()
    signals = ShutdownSignals()
    signals.install()
    with ExitStack() as stack:
        settings = _prepare_database(settings, stack)
        if not signals.requested:
            run_on_event_loop(_run(settings, signals, None, started_at))
