"""Speed of the gateway beside a baseline measured in the same run.

1. List latency, in-process: `GET /api/v1/jobs/` with each filter over httpx's ASGITransport, against the
   same SQL statements replayed with raw asyncpg (captured from the very requests that were measured).
2. Run throughput, over HTTP: `POST /api/v1/programs/run/` served by uvicorn in a subprocess, 32 concurrent
   keep-alive clients in a separate load-generator process, against a bare FastAPI endpoint doing one INSERT.

Usage: `.venv/bin/python -m bench.api_bench [--quick] [--keep] [--only list|run]` (see `--help`).
It creates a throwaway database on GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/
postgres), migrates it with Alembic, seeds it, measures, and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from asyncpg.connection import LoggedQuery
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings

from .api_run import percentile, run_throughput
from .api_seed import (
    DEFAULT_SERVER,
    PROVIDERS,
    Seed,
    SeedUser,
    admin_execute,
    job_records,
    plain_url,
    run_migrations,
    seed_accounts,
    seed_jobs,
    with_database,
)

LIST_TARGET_MS = 20.0


# ---------------------------------------------------------------- list latency, in-process


@dataclass
class ListCase:
    name: str
    params: Callable[[SeedUser, Seed, random.Random], dict[str, str | int]]


def list_cases(now: datetime) -> list[ListCase]:
    after = (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        ListCase("no filter", lambda u, s, r: {}),
        ListCase("function=<own title>", lambda u, s, r: {"function": u.titles[0]}),
        ListCase("provider=<name>", lambda u, s, r: {"provider": r.choice(list(PROVIDERS))}),
        ListCase("status=SUCCEEDED", lambda u, s, r: {"status": "SUCCEEDED"}),
        ListCase("status=RUNNING", lambda u, s, r: {"status": "RUNNING"}),
        ListCase("filter=catalog", lambda u, s, r: {"filter": "catalog"}),
        ListCase("filter=serverless", lambda u, s, r: {"filter": "serverless"}),
        ListCase("created_after=-30d", lambda u, s, r: {"created_after": after}),
        ListCase("offset=90% (deep page)", lambda u, s, r: {"offset": max(0, u.jobs * 9 // 10)}),
        ListCase("limit=100", lambda u, s, r: {"limit": 100}),
    ]


@dataclass
class ListResult:
    name: str
    gateway_ms: list[float]
    raw_ms: list[float]
    mean_count: float
    statements: int
    gateway_cpu_ms: float = float("nan")
    raw_cpu_ms: float = float("nan")


async def measure_lists(
    url: str, seed: Seed, data_dir: Path, n: int, rng: random.Random, cases: list[ListCase] | None = None
) -> list[ListResult]:
    """Each case (default: every `list_cases`) through the app in-process, each request paired with its own statements
    replayed at once in raw asyncpg."""
    settings = Settings(database_url=url, data_dir=data_dir, run_engine=False, public_url="http://bench")
    app = create_app(settings, start_engine=False)
    results: list[ListResult] = []
    async with app.router.lifespan_context(app):
        captured: list[tuple[str, Any]] = []
        _capture_statements(app.state.gateway.db_engine, captured)
        pool = await asyncpg.create_pool(plain_url(url), min_size=1, max_size=2, server_settings={"jit": "off"})
        transport = httpx.ASGITransport(app=app)
        async with pool, httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            gc.collect()  # the start-up's garbage, collected now rather than in the first measured requests
            floor, floor_cpu = await _time_floor(client, n)
            results.append(ListResult("(floor: GET /version, no auth/DB)", floor, [], 0.0, 0, floor_cpu))
            for case in list_cases(datetime.now(UTC)) if cases is None else cases:
                # Warm-up, both sides: every user's token in the cache (the measured requests pick among all of
                # them; a client that lists keeps its token warm), prepared statements, buffers.
                for user in seed.users:
                    captured.clear()
                    await client.get("/api/v1/jobs/", params=case.params(user, seed, rng), headers=user.headers)
                    await _replay(pool, await _listed_now(captured))
                gateway_ms: list[float] = []
                raw_ms: list[float] = []
                statement_counts: list[int] = []
                counts: list[int] = []
                gateway_cpu = raw_cpu = 0.0
                # Paired: each request, then its own statements in raw asyncpg at once, so a drift in the machine's
                # load between two phases cannot tilt the ratio.
                for _ in range(n):
                    user = rng.choice(seed.users)
                    captured.clear()
                    cpu, start = time.process_time(), time.perf_counter()
                    response = await client.get(
                        "/api/v1/jobs/", params=case.params(user, seed, rng), headers=user.headers
                    )
                    gateway_ms.append((time.perf_counter() - start) * 1000)
                    gateway_cpu += time.process_time() - cpu
                    if response.status_code != 200:
                        raise SystemExit(f"{case.name}: HTTP {response.status_code} {response.text[:300]}")
                    counts.append(int(response.json()["count"]))
                    statements = await _listed_now(captured)
                    statement_counts.append(len(statements))
                    cpu = time.process_time()
                    raw_ms.append(await _replay(pool, statements))
                    raw_cpu += time.process_time() - cpu
                result = ListResult(
                    case.name,
                    gateway_ms,
                    raw_ms,
                    statistics.fmean(counts),
                    int(statistics.median(statement_counts)),
                    gateway_cpu * 1000 / n,
                    raw_cpu * 1000 / n,
                )
                results.append(result)
                print(f"  measured {case.name}", file=sys.stderr, flush=True)
    return results


def _capture_statements(engine: AsyncEngine, captured: list[tuple[str, Any]]) -> None:
    """Append every statement the gateway sends, however it sends it: through SQLAlchemy (its cursor event) or
    straight through asyncpg (the driver's query logger, on each connection as the pool hands it out; asyncpg
    logs only what bypasses its prepared-statement API, which is exactly what SQLAlchemy does not see)."""

    def through_sqlalchemy(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        captured.append((statement, params))

    def through_asyncpg(query: LoggedQuery) -> None:
        captured.append((query.query, query.args))

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(through_asyncpg)  # a set: once per connection

    event.listen(engine.sync_engine, "before_cursor_execute", through_sqlalchemy)
    event.listen(engine.sync_engine.pool, "checkout", on_checkout)


async def _time_floor(client: httpx.AsyncClient, n: int) -> tuple[list[float], float]:
    """The in-process cost of a request that touches neither auth nor the database: (ms each, CPU-ms each)."""
    for _ in range(20):
        await client.get("/api/v1/version/")
    timings = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await client.get("/api/v1/version/")
        timings.append((time.perf_counter() - start) * 1000)
    return timings, (time.process_time() - cpu) * 1000 / n


async def _listed_now(captured: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The statements of the request just answered, the token look-up left out (the baseline does no auth).

    asyncpg hands its logged queries over with call_soon: one turn of the loop brings the last of them in.
    """
    await asyncio.sleep(0)
    listed = [(sql, params) for sql, params in captured if "api_token" not in sql]
    if not listed:
        raise SystemExit("no statement of a list request was captured: the baseline would measure nothing")
    return listed


async def _replay(pool: asyncpg.Pool, statements: list[tuple[str, Any]]) -> float:
    """One request's statements in raw asyncpg, no transaction (as a GET): ms."""
    start = time.perf_counter()
    async with pool.acquire() as conn:
        for sql, params in statements:
            await conn.fetch(sql, *(params or ()))
    return (time.perf_counter() - start) * 1000


def print_list_table(results: list[ListResult], n_jobs: int, n_users: int, n: int) -> bool:
    print(f"\nGET /api/v1/jobs/ in-process (httpx ASGITransport), {n} sequential requests per case from random users;")
    print(f"{n_jobs:,} jobs of {n_users} users. Baseline: the same SQL statements the endpoint ran, raw asyncpg.")
    print("Times in ms; 'cpu' is this process's CPU per request (for the gateway: app + httpx client; see the floor).")
    header = (
        f"{'case':<34}{'gw p50':>8}{'gw p95':>8}{'gw cpu':>8}{'raw p50':>9}{'raw p95':>9}{'raw cpu':>9}"
        f"{'gw/raw':>8}{'stmts':>6}{'avg count':>10}  target"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for r in results:
        p50, p95 = statistics.median(r.gateway_ms), percentile(r.gateway_ms, 0.95)
        if not r.raw_ms:
            print(f"{r.name:<34}{p50:>8.2f}{p95:>8.2f}{r.gateway_cpu_ms:>8.2f}")
            continue
        raw50, raw95 = statistics.median(r.raw_ms), percentile(r.raw_ms, 0.95)
        passed = p50 < LIST_TARGET_MS
        ok &= passed
        print(
            f"{r.name:<34}{p50:>8.2f}{p95:>8.2f}{r.gateway_cpu_ms:>8.2f}{raw50:>9.2f}{raw95:>9.2f}{r.raw_cpu_ms:>9.2f}"
            f"{p50 / raw50:>7.1f}x{r.statements:>6}{r.mean_count:>10.0f}  "
            f"{'PASS' if passed else 'FAIL'} (<{LIST_TARGET_MS:g})"
        )
    return ok


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 jobs, 50 requests/case, 3 s load")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    parser.add_argument("--only", choices=["list", "run"], help="run only one half")
    parser.add_argument("--jobs", type=int, help="jobs to seed (default 100,000)")
    parser.add_argument("--users", type=int, default=100, help="users to seed")
    parser.add_argument("--requests", type=int, help="measured list requests per case (default 200)")
    parser.add_argument("--duration", type=float, help="seconds of measured load (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts to try, comma-separated")
    parser.add_argument("--seed", type=int, default=20261124, help="random seed of the data and the requests")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="load generator's HTTP client (httpx costs ~4 ms/req)"
    )
    parser.add_argument(
        "--what-if",
        action="append",
        default=[],
        metavar="CHANGES",
        help="also load the gateway (1 worker) with changes joined by '+': async-deps, pool=N (GATEWAY_DB_POOL_SIZE)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of load; each row shows the median round")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the gateway under load, stacks to DIR")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="add this to the bench's scheduling priority (and its servers' and load generator's); negative needs "
        "root: on a machine shared with other work, -10 keeps the figures from measuring the neighbours",
    )
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (5_000 if args.quick else 100_000)
    args.requests = args.requests or (50 if args.quick else 200)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    if args.quick and args.warmup == 2.0:
        args.warmup = 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = os.environ.get("GATEWAY_BENCH_DATABASE_URL", DEFAULT_SERVER)
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    url = with_database(server, name, "postgresql+asyncpg")
    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    rng = random.Random(args.seed)
    if args.nice:
        os.nice(args.nice)
    niceness = f", niceness {os.nice(0)}" if args.nice else ""
    print(f"serverless-gateway bench: {psutil.cpu_count()} cores, {_load()} at start{niceness}")
    asyncio.run(admin_execute(server, f'CREATE DATABASE "{name}"'))
    ok = True
    try:
        started = time.perf_counter()
        run_migrations(url)
        seed = asyncio.run(seed_accounts(url, args.users, rng))
        now = datetime.now(UTC)
        records = job_records(seed, args.jobs, rng, now)
        asyncio.run(seed_jobs(url, records))
        heaviest = max(u.jobs for u in seed.users)
        print(
            f"seeded {args.jobs:,} jobs, {args.users} users (heaviest {heaviest:,} jobs), "
            f"{sum(len(p) for p in seed.user_programs.values())} user + {len(seed.catalog_programs)} catalog programs "
            f"in {time.perf_counter() - started:.1f} s"
        )
        if args.only in (None, "list"):
            machine = psutil.cpu_times()
            lists = asyncio.run(measure_lists(url, seed, work / "data", args.requests, rng))
            ok &= print_list_table(lists, args.jobs, args.users, args.requests)
            print(f"(machine busy {_busy_since(machine):.0%} during the list phase; {_load()})")
        if args.only in (None, "run"):
            ok &= run_throughput(url, seed, work, args, rng)
    finally:
        if args.keep:
            print(f"\nkept database: {url}")
        else:
            asyncio.run(admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)
    print(f"\noverall: {'PASS' if ok else 'FAIL'} ({_load()} at the end)")
    return 0 if ok else 1


def _busy_since(before: Any) -> float:
    after = psutil.cpu_times()
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return (total - idle) / total if total > 0 else 0.0


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} {five:.2f}"


if __name__ == "__main__":
    sys.exit(main())
