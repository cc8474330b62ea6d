"""The request session's scope: committed when used, dropped as it is when the request never touched it."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.db import call_after_commit, create_sessionmaker, session_scope
from serverless_gateway.models import Provider


async def _provider_names(engine: AsyncEngine, names: list[str]) -> list[str]:
    async with create_sessionmaker(engine)() as session:
        return list((await session.scalars(select(Provider.name).where(Provider.name.in_(names)))).all())


async def test_an_untouched_session_checks_out_nothing_and_still_runs_its_callbacks(db_engine: AsyncEngine) -> None:
    called: list[str] = []
    checked_out = db_engine.sync_engine.pool.checkedout()
    async for session in session_scope(create_sessionmaker(db_engine)):
        call_after_commit(session, lambda: called.append("after"))
    assert called == ["after"]
    assert db_engine.sync_engine.pool.checkedout() == checked_out


async def test_an_object_added_but_never_flushed_is_still_committed(db_engine: AsyncEngine) -> None:
    """No statement ran before the scope ends: the pending object must still reach the database."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    async for session in session_scope(create_sessionmaker(db_engine)):
        session.add(Provider(name=name))
    assert await _provider_names(db_engine, [name]) == [name]


async def test_a_read_then_a_write_is_committed_and_the_connection_returned(db_engine: AsyncEngine) -> None:
    name = f"p-{uuid.uuid4().hex[:8]}"
    checked_out = db_engine.sync_engine.pool.checkedout()
    async for session in session_scope(create_sessionmaker(db_engine)):
        await session.scalar(select(Provider.id).limit(1))
        session.add(Provider(name=name))
        await session.flush()
    assert await _provider_names(db_engine, [name]) == [name]
    assert db_engine.sync_engine.pool.checkedout() == checked_out


async def test_a_failing_request_rolls_back_and_skips_its_callbacks(db_engine: AsyncEngine) -> None:
    name = f"p-{uuid.uuid4().hex[:8]}"
    called: list[str] = []
    scope = session_scope(create_sessionmaker(db_engine))
    session = await anext(scope)
    session.add(Provider(name=name))
    await session.flush()
    call_after_commit(session, lambda: called.append("after"))
    with pytest.raises(RuntimeError):
        await scope.athrow(RuntimeError("the handler failed"))
    assert await _provider_names(db_engine, [name]) == []
    assert called == []
