"""`serverless-gateway cluster add | assign | list | remove`: operator-run Ray clusters for tenants."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
InTransaction = Callable[[Callable[["AsyncSession"], Awaitable[Any]]], Any]


def add_cluster_commands(commands: Any) -> None:
    cluster = commands.add_parser("cluster", help="manage operator-run Ray clusters").add_subparsers(
        dest="action", required=True
    )
    add = cluster.add_parser("add", help="register a Ray cluster by its dashboard URL")
    add.add_argument("name", help="a name for the cluster")
    add.add_argument("--address", required=True, help="the cluster's dashboard URL (http://host:8265)")
    add.add_argument("--token-file", type=Path, help="a file holding the cluster's RAY_AUTH_TOKEN (first line)")
    assign = cluster.add_parser("assign", help="run a user's, a group's or a provider's jobs on the cluster")
    assign.add_argument("name", help="the cluster's name")
    target = assign.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="the user whose own functions' jobs run there")
    target.add_argument("--group", help="the group whose members' own functions' jobs run there")
    target.add_argument("--provider", help="the provider whose functions' jobs (every consumer's) run there")
    listing = cluster.add_parser("list", help="the clusters of the registry (never their tokens)")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    cluster.add_parser("remove", help="forget a cluster and its assignments").add_argument(
        "name", help="the cluster's name"
    )


def run_cluster_command(args: argparse.Namespace, in_transaction: InTransaction) -> None:
    from .services import clusters

    if args.action == "add":
        token = clusters.read_token_file(args.token_file) if args.token_file else None
        in_transaction(lambda s: clusters.add_cluster(s, name=args.name, address=args.address, token=token))
        print(f"added cluster {args.name!r} at {args.address}" + ("" if token else " (no token)"))
    elif args.action == "assign":
        what = in_transaction(
            lambda s: clusters.assign_cluster(
                s, name=args.name, user=args.user, group=args.group, provider=args.provider
            )
        )
        print(f"{what} runs on cluster {args.name!r}")
    elif args.action == "list":
        rows: list[dict[str, Any]] = in_transaction(clusters.list_clusters)
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        columns = ("name", "kind", "state", "address", "assignments", "tenant", "last_used_at")
        widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
        print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
        for row in rows:
            print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
    elif args.action == "remove":
        in_transaction(lambda s: clusters.remove_cluster(s, name=args.name))
        print(f"removed cluster {args.name!r}")
