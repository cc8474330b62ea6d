"""Database engine, sessions and the declarative base."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

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


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncpg engine; JIT off because our queries are short and JIT only adds latency to them."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max(2, pool_size // 2),
        pool_pre_ping=False,
        connect_args={"server_settings": {"jit": "off", "application_name": "serverless-gateway"}},
    )


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def session_scope(sessionmaker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the handler succeeds, roll back when it raises."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        for callback in session.info.pop(AFTER_COMMIT, []):
            callback()


AFTER_COMMIT = "after_commit"


def call_after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run `callback` once the request's transaction has committed; dropped on rollback."""
    session.info.setdefault(AFTER_COMMIT, []).append(callback)
