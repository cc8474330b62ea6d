"""Apply the Alembic migrations, from a source checkout or from where a wheel installed them."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

DISTRIBUTION = "serverless-gateway"
# A wheel installs the migrations as data files (see `[tool.setuptools.data-files]` in pyproject.toml).
INSTALLED_SUFFIX = "share/serverless-gateway/migrations/env.py"
# Any fixed number: replicas starting at once take turns to migrate.
MIGRATION_LOCK_KEY = 7_305_114_212


class MigrationsNotFound(RuntimeError):
    """Neither a source checkout nor an installed copy of the migrations could be found."""


CHECKOUT_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    """The directory holding `env.py` and `versions/`: the checkout's when there is one, else the installed copy."""
    return find_migrations(CHECKOUT_MIGRATIONS, DISTRIBUTION)


def find_migrations(checkout: Path, distribution: str) -> Path:
    if (checkout / "env.py").is_file():
        return checkout
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix().endswith(INSTALLED_SUFFIX):
            installed = Path(str(file.locate())).resolve().parent
            if (installed / "env.py").is_file():
                return installed
    raise MigrationsNotFound(
        f"cannot find the database migrations: neither {checkout} nor an installed {INSTALLED_SUFFIX} exists"
    )


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration that needs no alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["configure_logging"] = False
    if url is not None:
        cfg.attributes["database_url"] = url
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_database(url: str) -> None:
    """Migrate the database at `url` to the newest revision, one replica at a time."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            await conn.commit()
            try:
                await conn.run_sync(_upgrade)
                await conn.commit()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                await conn.commit()
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database is at, or None when it has never been migrated."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
            if not exists:
                return None
            value = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            return None if value is None else str(value)
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    """The newest revision the installed migrations know."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
