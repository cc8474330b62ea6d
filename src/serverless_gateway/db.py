"""Database engine, sessions and the declarative base."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
from sqlalchemy import Engine, Executable, MetaData, PoolProxiedConnection, event
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import await_only, greenlet_spawn

from .config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


SessionMaker = async_sessionmaker[AsyncSession]


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    application_name: str = "serverless-gateway",
    connect_timeout_seconds: float = 5.0,
    statement_timeout_seconds: float = 30.0,
    idle_in_transaction_timeout_seconds: float = 60.0,
    max_overflow: int | None = None,
) -> AsyncEngine:
    """An asyncpg engine with bounded waits: connecting, waiting for a pooled connection, statements, idle transactions.

    JIT is off because our queries are short and JIT only adds latency to them; SQL parameters (job arguments,
    token hashes) never reach the log.
    """
    server_settings = {
        "jit": "off",
        "application_name": application_name,
        "statement_timeout": str(int(statement_timeout_seconds * 1000)),
        "idle_in_transaction_session_timeout": str(int(idle_in_transaction_timeout_seconds * 1000)),
    }
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max(2, pool_size // 2) if max_overflow is None else max_overflow,
        pool_pre_ping=False,  # see _ping_if_idle: a ping on every checkout would cost each request round trips
        pool_timeout=connect_timeout_seconds,
        hide_parameters=True,
        connect_args={
            "server_settings": server_settings,
            "timeout": connect_timeout_seconds,
            # A hung server never answers a statement: give up a little after PostgreSQL itself would have.
            "command_timeout": statement_timeout_seconds + 0.5,
        },
    )
    event.listen(engine.sync_engine.pool, "checkin", _stamp_checkin)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    event.listen(engine.sync_engine.pool, "invalidate", _abort)
    return engine


def _abort(dbapi_connection: Any, _record: Any, _exception: BaseException | None) -> None:
    """An invalidated connection is dropped at once: SQLAlchemy's graceful close would wait up to 2 s more on a
    hung server (after the statement already timed out) before the request could get its 503."""
    if dbapi_connection is not None:
        with contextlib.suppress(Exception):
            dbapi_connection.driver_connection.terminate()


# A pooled connection idle this long is pinged before a request gets it: a database restart (which drops every
# idle connection) costs no request, and a busy server pays nothing for the check.
PING_IDLE_SECONDS = 5.0


def _stamp_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    if time.monotonic() - record.info.get("checked_in", time.monotonic()) < PING_IDLE_SECONDS:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:
        raise DisconnectionError("a pooled connection was closed by the database") from exc


def create_db_engine(settings: Settings) -> AsyncEngine:
    """The API's pool: every wait bounded by GATEWAY_DB_REQUEST_TIMEOUT_SECONDS, so with the database hung or
    unreachable a request answers 503 within about that long instead of hanging."""
    if settings.database_url is None:
        raise RuntimeError("GATEWAY_DATABASE_URL must be resolved before connecting")
    request = settings.db_request_timeout_seconds
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        connect_timeout_seconds=min(settings.db_connect_timeout_seconds, request),
        statement_timeout_seconds=min(settings.db_statement_timeout_seconds, request),
        idle_in_transaction_timeout_seconds=settings.db_idle_in_transaction_timeout_seconds,
    )


ENGINE_POOL_SIZE = 6
"""Connections of the engine's own pool: API requests never wait for the engine's, nor the engine for theirs."""


def create_engine_db_engine(settings: Settings) -> AsyncEngine:
    """The engine's own small pool (dispatcher, status sync, deadlines), with the full statement timeout."""
    if settings.database_url is None:
        raise RuntimeError("GATEWAY_DATABASE_URL must be resolved before connecting")
    return create_engine(
        settings.database_url,
        pool_size=ENGINE_POOL_SIZE,
        max_overflow=ENGINE_POOL_SIZE,
        application_name="serverless-gateway-engine",
        connect_timeout_seconds=settings.db_connect_timeout_seconds,
        statement_timeout_seconds=settings.db_statement_timeout_seconds,
        idle_in_transaction_timeout_seconds=settings.db_idle_in_transaction_timeout_seconds,
    )


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def create_read_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    """Sessions for read-only requests: AUTOCOMMIT, so each statement is one round trip (no BEGIN, no COMMIT).

    Under READ COMMITTED every statement sees its own snapshot anyway, so a read loses no consistency by it.
    The engine view shares `engine`'s pool; the isolation level is reset when a connection goes back.
    """
    return create_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


def _untouched(session: AsyncSession) -> bool:
    """Nothing ran and nothing was added: there is no connection to give back and nothing to commit."""
    return not session.in_transaction() and not session.new and len(session.identity_map) == 0


async def session_scope(sessionmaker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the handler succeeds, roll back when it raises.

    A session the request never used (a token from the cache, an answer from memory) is dropped as it is: its
    commit and close would cost a request about 0.1 ms of greenlet hops for nothing.
    """
    session = sessionmaker()
    try:
        yield session
        if not _untouched(session):
            await session.commit()
    except BaseException:
        if not _untouched(session):
            await session.rollback()
        raise
    finally:
        if not _untouched(session):
            await session.close()
    for callback in session.info.pop(AFTER_COMMIT, []):
        callback()


_DEAD_CONNECTION = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
)
"""What BEGIN raises on a pooled connection the server closed (terminated backend, restarted server)."""
_DEAD_CONNECTIONS_SKIPPED = 100


class DriverTransaction:
    """A pooled connection's asyncpg connection in a transaction the request owns (see `driver_scope`).

    Lazy like a session: nothing is checked out, and no BEGIN is sent, until `connection()` is first awaited.
    """

    def __init__(self, engine: AsyncEngine, stack: AsyncExitStack) -> None:
        self._engine = engine
        self._stack = stack
        self._connection: asyncpg.Connection | None = None
        self.after_commit: list[Callable[[], None]] = []

    async def connection(self) -> asyncpg.Connection:
        """The asyncpg connection, in the transaction (begun on the first call).

        A pooled connection the server closed meanwhile (a database restart) fails at BEGIN, before the request
        did anything: it is dropped and BEGIN runs on the next one, until a live or fresh connection takes it
        (connecting itself is not retried: a database that is down still answers 503 at once).
        """
        for attempt in range(_DEAD_CONNECTIONS_SKIPPED + 1):
            if self._connection is not None:
                break
            try:
                self._connection = await self._begin(self._stack)
            except _DEAD_CONNECTION:
                if attempt == _DEAD_CONNECTIONS_SKIPPED:
                    raise
        assert self._connection is not None
        return self._connection

    async def _begin(self, stack: AsyncExitStack) -> asyncpg.Connection:
        # Checked out and given back in one greenlet hop each (an `AsyncConnection` takes three in all); SQLAlchemy
        # never executes anything on it, so it never begins a transaction there.
        pooled = await greenlet_spawn(self._engine.sync_engine.raw_connection)
        connection: asyncpg.Connection = pooled.driver_connection
        try:
            transaction = connection.transaction()
            await transaction.start()
        except BaseException:
            await greenlet_spawn(_give_back, pooled, True)
            raise

        async def end(exc_type: type[BaseException] | None, *_: object) -> bool:
            try:
                if exc_type is None:
                    await transaction.commit()
                else:
                    await transaction.rollback()
            finally:
                # SQLAlchemy did not see the error: a connection the server closed must not go back to the pool.
                await greenlet_spawn(_give_back, pooled, connection.is_closed())
            return False

        stack.push_async_exit(end)
        return connection


def _give_back(pooled: PoolProxiedConnection, drop: bool) -> None:
    """Return a pooled connection checked out for asyncpg's own use (in SQLAlchemy's greenlet); `drop` it when the
    server closed it."""
    if drop:
        pooled.invalidate()
    pooled.close()


async def driver_scope(engine: AsyncEngine) -> AsyncIterator[DriverTransaction]:
    """One asyncpg transaction per request, for the hottest write (queueing a run): commit on success, roll back
    when the handler raises, then the `after_commit` callbacks.

    SQLAlchemy adds ~70 µs of CPU to each of its round trips (greenlet hops, execution context, result); here the
    connection comes from the same pool, but BEGIN, the statements and COMMIT go straight through asyncpg.
    """
    async with AsyncExitStack() as stack:
        transaction = DriverTransaction(engine, stack)
        yield transaction
    for callback in transaction.after_commit:
        callback()


AFTER_COMMIT = "after_commit"


def call_after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run `callback` once the request's transaction has committed; dropped on rollback."""
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


class DriverStatement:
    """A statement built with SQLAlchemy and compiled once to asyncpg's SQL, for `DriverTransaction`s.

    Its parameters must all be named `bindparam`s (or literals); no expanding IN lists (they compile per call).
    """

    _DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]

    def __init__(self, statement: Executable) -> None:
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=self._DIALECT)
        assert isinstance(compiled, SQLCompiler)
        if compiled.post_compile_params:
            raise ValueError("a DriverStatement cannot hold an expanding IN list")
        self.sql = compiled.string
        names = list(compiled.positiontup or [])
        binds = [compiled.binds[name] for name in names]
        self._names = names
        self._defaults = {name: bind.value for name, bind in zip(names, binds, strict=True) if bind.value is not None}
        self._processors = [bind.type.dialect_impl(self._DIALECT).bind_processor(self._DIALECT) for bind in binds]

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for asyncpg, in the compiled order, through each type's bind processor."""
        out = []
        for name, processor in zip(self._names, self._processors, strict=True):
            value = values[name] if name in values else self._defaults[name]
            out.append(processor(value) if processor is not None and value is not None else value)
        return tuple(out)

    async def fetchrow(self, transaction: DriverTransaction, values: Mapping[str, Any]) -> asyncpg.Record | None:
        """Run it in the request's asyncpg transaction: its first row, if any."""
        connection = await transaction.connection()
        return await connection.fetchrow(self.sql, *self.parameters(values))

    async def fetch(self, engine: AsyncEngine, values: Mapping[str, Any]) -> list[asyncpg.Record]:
        """Run it as a read of its own, outside any transaction (one round trip, its own snapshot, like an
        AUTOCOMMIT session): every row.

        For the hottest reads (a list page): a pooled connection, straight through asyncpg, with none of a
        session's construction and result processing, and one greenlet hop for the checkout, the read and the
        return (an `AsyncConnection` would take three, about 40 µs more).
        """
        arguments = self.parameters(values)
        rows: list[asyncpg.Record] = await greenlet_spawn(self._fetch_pooled, engine.sync_engine, arguments)
        return rows

    def _fetch_pooled(self, engine: Engine, arguments: tuple[Any, ...]) -> list[asyncpg.Record]:
        """In SQLAlchemy's greenlet. A pooled connection the server closed meanwhile is dropped and the read runs
        again on the next one (a read can be repeated; a connection that cannot be made still fails at once)."""
        dropped = 0
        while True:
            pooled = engine.raw_connection()
            connection: asyncpg.Connection = pooled.driver_connection
            try:
                rows: list[asyncpg.Record] = await_only(connection.fetch(self.sql, *arguments))
                return rows
            except BaseException as exc:
                if not connection.is_closed():
                    raise
                dropped += 1
                if not isinstance(exc, _DEAD_CONNECTION) or dropped > _DEAD_CONNECTIONS_SKIPPED:
                    raise
            finally:
                _give_back(pooled, connection.is_closed())  # SQLAlchemy did not see the error: keep it out
