"""The `serverless-gateway` command: run the gateway and manage users, groups, providers and access."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from . import __version__
from .config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure explained in one line for the operator."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serverless-gateway",
        description="Run the serverless gateway, or manage its users, groups, providers and program access. "
        "Settings come from GATEWAY_* environment variables (see the README). Without GATEWAY_DATABASE_URL "
        "every command uses the embedded PostgreSQL under GATEWAY_DATA_DIR.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="apply migrations and run the HTTP API (and the engine)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000)")

    commands.add_parser(
        "dispatcher",
        help="run only the engine (no HTTP API), beside API replicas started with GATEWAY_RUN_ENGINE=false",
    )
    commands.add_parser("migrate", help="apply the database migrations and exit")

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    user_create = user.add_parser("create", help="create a user; prints its first API token alone on stdout")
    user_create.add_argument("name")

    token = commands.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    token_create = token.add_parser("create", help="a new API token for a user, printed alone on stdout")
    token_create.add_argument("user")

    group = commands.add_parser("group", help="manage groups").add_subparsers(dest="action", required=True)
    group.add_parser("create", help="create a group").add_argument("name")
    add_user = group.add_parser("add-user", help="put a user in a group")
    add_user.add_argument("group")
    add_user.add_argument("user")

    provider = commands.add_parser("provider", help="manage providers").add_subparsers(dest="action", required=True)
    provider_create = provider.add_parser("create", help="create a provider administered by a group")
    provider_create.add_argument("name")
    provider_create.add_argument("--admin-group", required=True, help="the group whose members administer it")

    program = commands.add_parser("program", help="manage provider programs").add_subparsers(
        dest="action", required=True
    )
    grant = program.add_parser("grant", help="let a group view or run a provider's program")
    grant.add_argument("title")
    grant.add_argument("--provider", required=True)
    grant.add_argument("--group", required=True)
    level = grant.add_mutually_exclusive_group(required=True)
    level.add_argument("--run", dest="level", action="store_const", const="run", help="the group may run it")
    level.add_argument("--view", dest="level", action="store_const", const="view", help="the group may only see it")
    return parser


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, not {port}")
    return port


@contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The configured database, else the embedded one (started for the command, migrated, stopped after)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from .embedded_db import embedded_postgres
    from .schema import upgrade_database

    with embedded_postgres(settings.data_dir) as url:
        asyncio.run(upgrade_database(url))
        yield url


def _in_transaction(settings: Settings, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `action` in one committed transaction."""
    from .db import create_engine, create_sessionmaker

    async def run(url: str) -> T:
        engine = create_engine(url, pool_size=1)
        try:
            async with create_sessionmaker(engine).begin() as session:
                return await action(session)
        finally:
            await engine.dispose()

    with _database(settings) as url:
        return asyncio.run(run(url))


def _migrate(settings: Settings) -> None:
    from .schema import current_revision, upgrade_database

    with _database(settings) as url:
        if settings.database_url is not None:
            asyncio.run(upgrade_database(url))
        print(f"database at revision {asyncio.run(current_revision(url))}")


def _admin(settings: Settings, args: argparse.Namespace) -> None:
    from .services import accounts

    key = (args.command, args.action)
    if key == ("user", "create"):

        async def create_user(session: AsyncSession) -> str:
            _, token = await accounts.create_user(session, username=args.name)
            return token

        print(_in_transaction(settings, create_user))
    elif key == ("token", "create"):

        async def create_token(session: AsyncSession) -> str:
            return await accounts.create_token(session, user=await accounts.require_user(session, args.user))

        print(_in_transaction(settings, create_token))
    elif key == ("group", "create"):
        _in_transaction(settings, lambda session: accounts.create_group(session, name=args.name))
        print(f"created group {args.name!r}")
    elif key == ("group", "add-user"):
        _in_transaction(
            settings, lambda session: accounts.add_user_to_group(session, username=args.user, group_name=args.group)
        )
        print(f"user {args.user!r} is in group {args.group!r}")
    elif key == ("provider", "create"):
        _in_transaction(
            settings, lambda session: accounts.create_provider(session, name=args.name, admin_group=args.admin_group)
        )
        print(f"created provider {args.name!r}, administered by group {args.admin_group!r}")
    elif key == ("program", "grant"):
        from .services.programs import grant_program

        _in_transaction(
            settings,
            lambda session: grant_program(
                session, title=args.title, provider=args.provider, group=args.group, level=args.level
            ),
        )
        print(f"group {args.group!r} may {args.level} program {args.title!r} of provider {args.provider!r}")
    else:  # pragma: no cover - argparse only lets known commands through
        raise CommandError(f"unknown command {' '.join(key)}")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("serverless_gateway").setLevel(logging.INFO)


def _describe(exc: BaseException) -> str | None:
    """One line for the failures an operator can fix; None for bugs (they keep their traceback)."""
    import asyncpg
    import sqlalchemy.exc

    from .embedded_db import EmbeddedDatabaseError
    from .errors import GatewayError
    from .schema import MigrationsNotFound

    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, CommandError | SettingsError | EmbeddedDatabaseError | MigrationsNotFound):
        return str(exc)
    server = sys.modules.get("serverless_gateway.server")  # loaded only by `serve`, which is slow to import
    if server is not None and isinstance(exc, server.ServeError):
        return str(exc)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        cause = exc.orig.__cause__ if exc.orig is not None else None
        if isinstance(cause, asyncpg.UndefinedTableError):
            return f"the database has no gateway tables ({cause}); run `serverless-gateway migrate` first"
        return f"database error: {cause or exc.orig}"
    if isinstance(exc, asyncpg.PostgresError | OSError):
        return f"cannot use the database: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            from .server import serve

            _configure_logging()
            serve(settings, host=args.host, port=args.port)
        elif args.command == "dispatcher":
            if settings.public_url is None:  # checked before the slow import of the server
                raise CommandError(
                    "the dispatcher needs GATEWAY_PUBLIC_URL: the URL where jobs reach a gateway API replica"
                )
            from .server import dispatch

            _configure_logging()
            dispatch(settings)
        elif args.command == "migrate":
            _migrate(settings)
        else:
            _admin(settings, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        print(f"serverless-gateway: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
