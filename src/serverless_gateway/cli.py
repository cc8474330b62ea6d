"""The `serverless-gateway` command: run the gateway and manage users, groups, providers and access."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__
from .cli_clusters import add_cluster_commands, run_cluster_command
from .config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .services.accounts import TokenInfo

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
    collect = commands.add_parser(
        "gc",
        help="remove stored artifacts, results and logs that no row references any more "
        "(only those older than GATEWAY_GC_GRACE_SECONDS); prints what it removed",
    )
    collect.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    collect.add_argument(
        "--workdirs",
        action="store_true",
        help="also unpacked artifacts and job packages under GATEWAY_DATA_DIR/workdirs; only while no engine runs "
        "on this data dir (a running engine collects its own)",
    )

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    user_create = user.add_parser("create", help="create a user; prints its first API token alone on stdout")
    user_create.add_argument("name", help="the new user's name (letters, digits and _ . @ + -)")
    _list_parser(user, "list", "list users and their groups")
    user.add_parser("disable", help="disable a user: none of its tokens work any more").add_argument(
        "name", help="the user's name"
    )
    user.add_parser("enable", help="enable a disabled user again").add_argument("name", help="the user's name")

    token = commands.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    token_create = token.add_parser("create", help="a new API token for a user, printed alone on stdout")
    token_create.add_argument("user", help="the user's name")
    token_create.add_argument(
        "--expires-in", type=_duration, default=None, help="lifetime, e.g. 90m, 12h or 30d (default: until revoked)"
    )
    token_list = token.add_parser("list", help="a user's tokens: id, created, last used, expiry (never the secret)")
    token_list.add_argument("user", help="the user's name")
    token_list.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    token.add_parser("revoke", help="revoke a token by its id (see `token list`)").add_argument(
        "id", help="the token's id"
    )

    group = commands.add_parser("group", help="manage groups").add_subparsers(dest="action", required=True)
    group.add_parser("create", help="create a group").add_argument("name", help="the new group's name")
    add_user = group.add_parser("add-user", help="put a user in a group")
    add_user.add_argument("group", help="the group's name")
    add_user.add_argument("user", help="the user's name")
    _list_parser(group, "list", "list groups, their members and the providers they administer")

    provider = commands.add_parser("provider", help="manage providers").add_subparsers(dest="action", required=True)
    provider_create = provider.add_parser("create", help="create a provider administered by a group")
    provider_create.add_argument("name", help="the new provider's name")
    provider_create.add_argument("--admin-group", required=True, help="the group whose members administer it")
    _list_parser(provider, "list", "list providers and their admin groups")

    program = commands.add_parser("program", help="manage provider programs").add_subparsers(
        dest="action", required=True
    )
    grant = program.add_parser("grant", help="let a group view or run a provider's program")
    grant.add_argument("title", help="the program's title")
    grant.add_argument("--provider", required=True, help="the provider the program belongs to")
    grant.add_argument("--group", required=True, help="the group that gets the access")
    level = grant.add_mutually_exclusive_group(required=True)
    level.add_argument("--run", dest="level", action="store_const", const="run", help="the group may run it")
    level.add_argument("--view", dest="level", action="store_const", const="view", help="the group may only see it")
    grants = _list_parser(program, "grants", "list which groups may view or run which provider programs")
    grants.add_argument("--provider", help="only this provider's programs")
    add_cluster_commands(commands)
    return parser


def _list_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    listing = actions.add_parser(name, help=text)
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    return listing


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, not {port}")
    return port


_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_LIFETIME = timedelta(days=36500)


def _duration(value: str) -> timedelta:
    """`30d`, `12h`, `90m` or `45s` as a timedelta (at most 100 years)."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (a whole number and s, m, h or d, e.g. 30d)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_TOKEN_LIFETIME.total_seconds():
        raise argparse.ArgumentTypeError(f"a duration is at most {MAX_TOKEN_LIFETIME.days}d, not {value!r}")
    return timedelta(seconds=seconds)


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _print_tokens(tokens: Sequence[TokenInfo], *, as_json: bool) -> None:
    rows = [
        {
            "id": str(token.id),
            "created": _when(token.created),
            "last_used": _when(token.last_used),
            "expires": _when(token.expires),
            "revoked": _when(token.revoked),
            "state": token.state,
        }
        for token in tokens
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    columns = ("id", "created", "last_used", "expires", "state")
    table = [[c.upper().replace("_", " ") for c in columns]]
    table += [[row[c] or "-" for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


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


def _collect(settings: Settings, *, dry_run: bool, workdirs: bool) -> None:
    from .db import create_engine, create_sessionmaker
    from .services.retention import Collected, Workdirs, collect_garbage
    from .storage import open_storage

    async def run(url: str) -> Collected:
        engine = create_engine(url, pool_size=1)
        storage = await open_storage(settings)
        try:
            return await collect_garbage(
                create_sessionmaker(engine),
                storage,
                grace=timedelta(seconds=settings.gc_grace_seconds),
                dry_run=dry_run,
                workdirs=Workdirs((settings.data_dir / "workdirs").resolve()) if workdirs else None,
            )
        finally:
            await storage.close()
            await engine.dispose()

    with _database(settings) as url:
        done = asyncio.run(run(url))
    verb = "would remove" if dry_run else "removed"
    for key in done.objects:
        print(f"{verb} {key}")
    for directory in done.directories:
        print(f"{verb} {directory}/")
    for note in done.notes:
        print(f"note: {note}")
    print(f"{verb} {len(done.objects)} stored objects and {len(done.directories)} directories")


def _admin(settings: Settings, args: argparse.Namespace) -> None:
    from .services import accounts

    key = (args.command, args.action)
    if args.command == "cluster":
        run_cluster_command(args, lambda action: _in_transaction(settings, action))
    elif key == ("user", "create"):

        async def create_user(session: AsyncSession) -> str:
            _, token = await accounts.create_user(session, username=args.name)
            return token

        print(_in_transaction(settings, create_user))
    elif key in (("user", "disable"), ("user", "enable")):
        disabled = args.action == "disable"
        _in_transaction(
            settings, lambda session: accounts.set_user_disabled(session, username=args.name, disabled=disabled)
        )
        print(f"user {args.name!r} is {args.action}d")
    elif key == ("token", "create"):

        async def create_token(session: AsyncSession) -> str:
            user = await accounts.require_user(session, args.user)
            return await accounts.create_token(session, user=user, expires_in=args.expires_in)

        print(_in_transaction(settings, create_token))
    elif key == ("token", "list"):
        tokens = _in_transaction(settings, lambda session: accounts.list_tokens(session, username=args.user))
        _print_tokens(tokens, as_json=args.json)
    elif key == ("token", "revoke"):
        revoked = _in_transaction(settings, lambda session: accounts.revoke_token(session, token_id=args.id))
        print(f"token {revoked.id} revoked at {_when(revoked.revoked)}")
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
    elif key in LISTS:
        kind = LISTS[key]
        provider = getattr(args, "provider", None)
        rows = _in_transaction(settings, lambda session: accounts.listing(session, kind, provider=provider))
        _print_rows(rows, as_json=args.json)
    else:  # pragma: no cover - argparse only lets known commands through
        raise CommandError(f"unknown command {' '.join(key)}")


LISTS = {
    ("user", "list"): "users",
    ("group", "list"): "groups",
    ("provider", "list"): "providers",
    ("program", "grants"): "grants",
}


def _print_rows(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """A JSON array, or an aligned table (lists joined by commas; `-` for none)."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    cells = [[_cell(row[column]) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    for line in [[column.upper() for column in columns], *cells]:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "-"
    return str(value)


def _configure_logging(settings: Settings) -> None:
    from .log_config import configure_logging

    configure_logging(settings.log_level, settings.log_format)


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

            _configure_logging(settings)
            serve(settings, host=args.host, port=args.port)
        elif args.command == "dispatcher":
            if settings.public_url is None:  # checked before the slow import of the server
                raise CommandError(
                    "the dispatcher needs GATEWAY_PUBLIC_URL: the URL where jobs reach a gateway API replica"
                )
            from .server import dispatch

            _configure_logging(settings)
            dispatch(settings)
        elif args.command == "migrate":
            _migrate(settings)
        elif args.command == "gc":
            _collect(settings, dry_run=args.dry_run, workdirs=args.workdirs)
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
