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
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import event, insert
from sqlalchemy.engine import make_url

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings, load_settings
from serverless_gateway.db import create_engine, create_sessionmaker
from serverless_gateway.models import Job, Program, ProgramAccess
from serverless_gateway.services import accounts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
LIST_TARGET_MS = 20.0
RUN_TARGET_RPS = 300.0

USER_TITLES = ["vqe", "qaoa", "sampler-demo", "estimator-demo", "chemistry", "portfolio", "grover", "hello-world"]
PROVIDERS = {
    "ibm": ["circuit-knitting", "transpiler-service", "error-mitigation"],
    "acme": ["chem-solver", "optimizer"],
    "qlab": ["kernel-trainer", "sampler-plus", "noise-study"],
}
TERMINAL_WEIGHTS = {"SUCCEEDED": 78, "FAILED": 15, "STOPPED": 7}
ACTIVE_WEIGHTS = {"RUNNING": 12, "PENDING": 4, "QUEUED": 8}
ACTIVE_WINDOW = timedelta(hours=6)  # only jobs this recent may still be active, 1 in 4 of them
CATALOG_SHARE = 0.25


# ---------------------------------------------------------------- database and seed


@dataclass
class SeedUser:
    id: uuid.UUID
    name: str
    token: str
    titles: list[str]
    jobs: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Seed:
    users: list[SeedUser]
    user_programs: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    catalog_programs: list[tuple[str, str, uuid.UUID]] = field(default_factory=list)  # provider, title, id


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, name: str, driver: str) -> str:
    return make_url(url).set(drivername=driver, database=name).render_as_string(hide_password=False)


async def _admin(server: str, sql: str) -> None:
    for attempt in range(30):  # a shared server may be out of connections for a moment
        try:
            conn = await asyncpg.connect(_with_database(server, "postgres", "postgresql"))
            break
        except asyncpg.TooManyConnectionsError:
            if attempt == 29:
                raise
            await asyncio.sleep(1)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_migrations(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


async def seed_accounts(url: str, n_users: int, rng: random.Random) -> Seed:
    """Users with tokens (through the accounts service), providers with admins, and their programs."""
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            public = await accounts.create_group(session, name="bench-users")
            users: list[SeedUser] = []
            for i in range(n_users):
                user, token = await accounts.create_user(session, username=f"bench-user-{i:03d}")
                await accounts.add_user_to_group(session, username=user.username, group_name=public.name)
                titles = rng.sample(USER_TITLES, rng.randint(2, 6))
                users.append(SeedUser(id=user.id, name=user.username, token=token, titles=titles))
            seed = Seed(users=users)
            for user in users:
                programs = [_program(title, author_id=user.id) for title in user.titles]
                session.add_all(programs)
                seed.user_programs[user.id] = [p.id for p in programs]
            for index, (provider_name, titles) in enumerate(PROVIDERS.items()):
                admins = await accounts.create_group(session, name=f"{provider_name}-admins")
                admin = users[index]
                await accounts.add_user_to_group(session, username=admin.name, group_name=admins.name)
                provider = await accounts.create_provider(session, name=provider_name, admin_group=admins.name)
                for title in titles:
                    program = _program(title, author_id=admin.id, provider_id=provider.id)
                    session.add(program)
                    session.add(ProgramAccess(program_id=program.id, group_id=public.id, level="run"))
                    seed.catalog_programs.append((provider_name, title, program.id))
            await session.flush()
    finally:
        await engine.dispose()
    return seed


def _program(title: str, *, author_id: uuid.UUID, provider_id: uuid.UUID | None = None) -> Program:
    program_id = uuid.uuid4()
    return Program(
        id=program_id,
        title=title,
        entrypoint="main.py",
        artifact_key=f"programs/{program_id}/artifact.tar",
        artifact_sha256="0" * 64,
        dependencies=[],
        env_vars={},
        provider_id=provider_id,
        author_id=author_id,
    )


JOB_COLUMNS = [
    "id", "program_id", "author_id", "status", "arguments", "config", "result", "ray_submission_id",
    "token_hash", "created_at", "updated_at", "started_at", "finished_at",
]  # fmt: skip


def job_records(seed: Seed, n_jobs: int, rng: random.Random, now: datetime) -> list[tuple[Any, ...]]:
    """`n_jobs` jobs over the users (skewed: a few heavy users), their programs, statuses and the past year."""
    weights = [rng.lognormvariate(0, 0.7) for _ in seed.users]
    scale = n_jobs / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in range(n_jobs - sum(counts)):
        counts[i % len(counts)] += 1
    terminal, terminal_weights = list(TERMINAL_WEIGHTS), list(TERMINAL_WEIGHTS.values())
    active, active_weights = list(ACTIVE_WEIGHTS), list(ACTIVE_WEIGHTS.values())
    records: list[tuple[Any, ...]] = []
    for user, count in zip(seed.users, counts, strict=True):
        user.jobs = count
        own = seed.user_programs[user.id]
        own_weights = [1 / (k + 1) for k in range(len(own))]
        for _ in range(count):
            if rng.random() < CATALOG_SHARE:
                program_id = rng.choice(seed.catalog_programs)[2]
            else:
                program_id = rng.choices(own, own_weights)[0]
            created = now - timedelta(days=365 * rng.random() ** 2, seconds=rng.random() * 60)
            if now - created < ACTIVE_WINDOW and rng.random() < 0.25:
                status = rng.choices(active, active_weights)[0]
            else:
                status = rng.choices(terminal, terminal_weights)[0]
            started = None if status == "QUEUED" else created + timedelta(seconds=rng.uniform(1, 60))
            finished = None
            if status in ("SUCCEEDED", "FAILED", "STOPPED") and started is not None:
                finished = started + timedelta(seconds=rng.uniform(1, 900))
            job_id = uuid.uuid4()
            records.append(
                (
                    job_id,
                    program_id,
                    user.id,
                    status,
                    json.dumps({"shots": rng.choice([100, 1024, 4096]), "depth": rng.randint(1, 20)}),
                    json.dumps({"workers": 1}),
                    '{"counts": {"00": 512, "11": 512}}' if status == "SUCCEEDED" else None,
                    None if status == "QUEUED" else f"gw-{job_id}",
                    uuid.uuid4().hex * 2 if status in ("PENDING", "RUNNING") else None,
                    created,
                    finished or started or created,
                    started,
                    finished,
                )
            )
    return records


async def seed_jobs(url: str, records: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(_plain(url))
    try:
        await conn.copy_records_to_table("job", records=records, columns=JOB_COLUMNS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure_lists(url: str, seed: Seed, data_dir: Path, n: int, rng: random.Random) -> list[ListResult]:
    settings = Settings(database_url=url, data_dir=data_dir, run_engine=False, public_url="http://bench")
    app = create_app(settings, start_engine=False)
    results: list[ListResult] = []
    async with app.router.lifespan_context(app):
        captured: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            captured.append((statement, params))

        event.listen(app.state.gateway.db_engine.sync_engine, "before_cursor_execute", capture)
        pool = await asyncpg.create_pool(_plain(url), min_size=1, max_size=2, server_settings={"jit": "off"})
        transport = httpx.ASGITransport(app=app)
        async with pool, httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            gc.collect()  # the start-up's garbage, collected now rather than in the first measured requests
            floor, floor_cpu = await _time_floor(client, n)
            results.append(ListResult("(floor: GET /version, no auth/DB)", floor, [], 0.0, 0, floor_cpu))
            for case in list_cases(datetime.now(UTC)):
                for user in seed.users[:20]:  # warm-up: token cache, prepared statements, buffers
                    await client.get("/api/v1/jobs/", params=case.params(user, seed, rng), headers=user.headers)
                gateway_ms: list[float] = []
                replays: list[list[tuple[str, Any]]] = []
                counts: list[int] = []
                cpu = time.process_time()
                for _ in range(n):
                    user = rng.choice(seed.users)
                    captured.clear()
                    start = time.perf_counter()
                    response = await client.get(
                        "/api/v1/jobs/", params=case.params(user, seed, rng), headers=user.headers
                    )
                    gateway_ms.append((time.perf_counter() - start) * 1000)
                    if response.status_code != 200:
                        raise SystemExit(f"{case.name}: HTTP {response.status_code} {response.text[:300]}")
                    counts.append(int(response.json()["count"]))
                    replays.append([(s, p) for s, p in captured if "api_token" not in s])
                gateway_cpu = (time.process_time() - cpu) * 1000 / n
                cpu = time.process_time()
                raw_ms = await _replay(pool, replays)
                raw_cpu = (time.process_time() - cpu) * 1000 / (n + min(20, n))
                statements = int(statistics.median(len(r) for r in replays)) if replays else 0
                mean_count = statistics.fmean(counts)
                results.append(ListResult(case.name, gateway_ms, raw_ms, mean_count, statements, gateway_cpu, raw_cpu))
                print(f"  measured {case.name}", file=sys.stderr, flush=True)
    return results


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


async def _replay(pool: asyncpg.Pool, replays: list[list[tuple[str, Any]]]) -> list[float]:
    """The statements each measured request ran (token lookups left out), in one transaction, raw asyncpg."""
    timings = []
    for statements in replays[:20] + replays:  # the first 20 warm the statement cache
        start = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            for sql, params in statements:
                await conn.fetch(sql, *(params or ()))
        timings.append((time.perf_counter() - start) * 1000)
    return timings[min(20, len(replays)) :]


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
        p50, p95 = statistics.median(r.gateway_ms), _pct(r.gateway_ms, 0.95)
        if not r.raw_ms:
            print(f"{r.name:<34}{p50:>8.2f}{p95:>8.2f}{r.gateway_cpu_ms:>8.2f}")
            continue
        raw50, raw95 = statistics.median(r.raw_ms), _pct(r.raw_ms, 0.95)
        passed = p50 < LIST_TARGET_MS
        ok &= passed
        print(
            f"{r.name:<34}{p50:>8.2f}{p95:>8.2f}{r.gateway_cpu_ms:>8.2f}{raw50:>9.2f}{raw95:>9.2f}{r.raw_cpu_ms:>9.2f}"
            f"{p50 / raw50:>7.1f}x{r.statements:>6}{r.mean_count:>10.0f}  "
            f"{'PASS' if passed else 'FAIL'} (<{LIST_TARGET_MS:g})"
        )
    return ok


# ---------------------------------------------------------------- run throughput, over HTTP


class BareRunBody(BaseModel):
    title: str
    provider: str | None = None
    arguments: str | dict[str, Any] = "{}"
    config: dict[str, Any] = {}


def make_gateway_app() -> FastAPI:
    """uvicorn factory: the real app from GATEWAY_* variables, engine off, with BENCH_WHAT_IF changes if any."""
    what_if = [w for w in os.environ.get("BENCH_WHAT_IF", "").split("+") if w]
    overrides: dict[str, object] = {}
    for change in what_if:
        if change.startswith("pool="):
            overrides["db_pool_size"] = int(change.removeprefix("pool="))
    app = create_app(load_settings(**overrides), start_engine=False)
    if "async-deps" in what_if:  # the sync `def` dependencies of deps.py as `async def`: no threadpool hop
        from serverless_gateway import deps

        async def state(request: Request) -> Any:
            return request.app.state.gateway

        async def settings(request: Request) -> Any:
            return request.app.state.gateway.settings

        async def storage(request: Request) -> Any:
            return request.app.state.gateway.storage

        app.dependency_overrides.update({deps.get_state: state, deps.get_settings: settings, deps.get_storage: storage})
    return app


def make_bare_app() -> FastAPI:
    """uvicorn factory: the baseline, one endpoint doing one INSERT through SQLAlchemy async, same pool."""
    url = os.environ["BENCH_DATABASE_URL"]
    program_id = uuid.UUID(os.environ["BENCH_PROGRAM_ID"])
    author_id = uuid.UUID(os.environ["BENCH_AUTHOR_ID"])

    pool_size = int(getattr(load_settings(), "db_pool_size", 10))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(url, pool_size=pool_size)
        app.state.sessionmaker = create_sessionmaker(engine)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/liveness/")
    async def liveness() -> dict[str, str]:
        return {"status": "alive"}

    @app.post("/run/")
    async def run(body: BareRunBody) -> dict[str, str]:
        job_id = uuid.uuid4()
        arguments = body.arguments if isinstance(body.arguments, str) else json.dumps(body.arguments)
        async with app.state.sessionmaker.begin() as session:
            values = {"program_id": program_id, "author_id": author_id, "arguments": arguments}
            await session.execute(insert(Job).values(id=job_id, config=body.config, **values))
        return {"id": str(job_id), "status": "QUEUED"}

    return app


def run_payloads(seed: Seed, rng: random.Random) -> list[dict[str, Any]]:
    """One run request per user and program it may run, shuffled: the load spreads over every user."""
    payloads = []
    config = {"workers": 1, "min_workers": 1, "max_workers": 2, "auto_scaling": False}
    for user in seed.users:
        for title in user.titles:
            body = {"title": title, "arguments": json.dumps({"shots": 1024}), "config": config}
            payloads.append({"token": user.token, "body": body})
        provider, title, _ = rng.choice(seed.catalog_programs)
        body = {"title": title, "provider": provider, "arguments": json.dumps({"shots": 1024}), "config": config}
        payloads.append({"token": user.token, "body": body})
    rng.shuffle(payloads)
    return payloads


@dataclass
class LoadResult:
    label: str
    app: str
    workers: int
    completed: int
    elapsed: float
    codes: dict[str, int]
    latencies_ms: list[float]
    server_cpu: float
    loadgen_cpu: float
    postgres_cpu: float
    machine_busy: float
    new_connections: int
    what_if: str = ""
    all_rps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        ok = sum(v for k, v in self.codes.items() if k.startswith("2"))
        return ok / self.elapsed if self.elapsed else 0.0

    @property
    def errors(self) -> int:
        return sum(v for k, v in self.codes.items() if not k.startswith("2"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
    return seconds


Snapshot = tuple[dict[int, float], dict[int, float], float, float, int]


def _snapshot(server: psutil.Process, probe: DbProbe) -> Snapshot:
    """CPU seconds of the server tree and of the database's backends, the machine's busy/total, DB sessions."""
    sessions, backend_pids = probe.sample()
    tree = [server, *server.children(recursive=True)]
    backends = []
    for pid in backend_pids:
        with contextlib.suppress(psutil.Error):
            backends.append(psutil.Process(pid))
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)
    return _cpu_seconds(tree), _cpu_seconds(backends), sum(machine) - idle, sum(machine), sessions


class DbProbe:
    """One connection kept open through the run phase (a shared server may have no connection to spare later)."""

    def __init__(self, url: str):
        self._runner = asyncio.Runner()
        self._conn: asyncpg.Connection = self._runner.run(asyncpg.connect(_plain(url)))

    def sample(self) -> tuple[int, list[int]]:
        """Connections ever opened to the database and the pids of its other backends."""

        async def query() -> tuple[int, list[int]]:
            sessions = await self._conn.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
            rows = await self._conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(sessions), [int(row["pid"]) for row in rows]

        return self._runner.run(query())

    def drain(self, since: datetime) -> None:
        """Play the engine: finish the jobs earlier rounds queued, so every round starts from the same state."""

        async def finish() -> None:
            await self._conn.execute(
                "UPDATE job SET status = 'SUCCEEDED', started_at = created_at, finished_at = now(), "
                "updated_at = now() WHERE status = 'QUEUED' AND created_at >= $1",
                since,
            )
            await self._conn.execute("VACUUM (ANALYZE) job")

        self._runner.run(finish())

    def close(self) -> None:
        self._runner.run(self._conn.close())
        self._runner.close()


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def serve_and_load(
    *,
    app: str,
    workers: int,
    env: dict[str, str],
    payloads_file: Path,
    args: argparse.Namespace,
    log_dir: Path,
    probe: DbProbe,
) -> LoadResult:
    """Start uvicorn in a subprocess, drive it from a load-generator subprocess, stop both."""
    port = _free_port()
    factory = "bench.api_bench:make_gateway_app" if app == "gateway" else "bench.api_bench:make_bare_app"
    ready, path = ("/api/v1/liveness/", "/api/v1/programs/run/") if app == "gateway" else ("/liveness/", "/run/")
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    log_path = log_dir / f"uvicorn-{app}-{workers}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--no-access-log", "--log-level", "warning", "--backlog", "512"],
            cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_ready(url + ready, server, log_path)
            load = subprocess.Popen(
                [sys.executable, "-m", "bench.api_bench", "--loadgen", url + path, "--payloads", str(payloads_file),
                 "--duration", str(args.duration), "--clients", str(args.clients), "--warmup", str(args.warmup),
                 "--client", args.client],
                cwd=ROOT, env=child_env, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                report, before, after = _follow_load(load, server, app, workers, probe, args)
            finally:
                _stop(load, signal.SIGTERM)
        finally:
            _stop(server, signal.SIGINT)
    return LoadResult(
        label=f"uvicorn --workers {workers}",
        app=app,
        workers=workers,
        completed=report["completed"],
        elapsed=report["elapsed"],
        codes=report["codes"],
        latencies_ms=report["latencies_ms"],
        server_cpu=_delta(before[0], after[0]),
        loadgen_cpu=report["cpu"],
        postgres_cpu=_delta(before[1], after[1]),
        machine_busy=(after[2] - before[2]) / max(1e-9, after[3] - before[3]),
        new_connections=after[4] - before[4],
    )


def _follow_load(
    load: subprocess.Popen[str],
    server: subprocess.Popen[bytes],
    app: str,
    workers: int,
    probe: DbProbe,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], Snapshot, Snapshot]:
    """Read the load generator's GO / END / report lines, sampling CPU and connections at GO and END."""
    assert load.stdout is not None
    handle = psutil.Process(server.pid)
    before = after = _snapshot(handle, probe)
    report: dict[str, Any] = {}
    profiler: subprocess.Popen[bytes] | None = None
    for line in load.stdout:
        if line.startswith("GO"):
            before = _snapshot(handle, probe)
            if args.profile and app == "gateway":
                profiler = _start_profiler(server.pid, args, args.profile / f"{app}-w{workers}.txt")
        elif line.startswith("END"):
            after = _snapshot(handle, probe)
        elif line.startswith("{"):
            report = json.loads(line)
    if load.wait() != 0 or not report:
        raise SystemExit(f"load generator failed against {app}")
    if profiler is not None:
        profiler.wait(timeout=60)
    return report, before, after


def _stop(process: subprocess.Popen[Any], sig: signal.Signals) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start_profiler(pid: int, args: argparse.Namespace, out: Path) -> subprocess.Popen[bytes]:
    """py-spy over the server process(es) for the measured window, collapsed stacks (flamegraph.pl input)."""
    args.profile.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "100", "--format", "raw",
         "--duration", str(max(1, int(args.duration))), "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_ready(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"uvicorn exited ({server.returncode}):\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"uvicorn did not answer {url} within 60 s:\n{log_path.read_text()[-2000:]}")


async def loadgen(args: argparse.Namespace) -> None:
    """The load-generator process: `clients` concurrent keep-alive connections; prints GO, END, then JSON."""
    payloads = json.loads(args.payloads.read_text())
    clients: int = args.clients
    post = _raw_poster(args.loadgen, payloads) if args.client == "raw" else _httpx_poster(args.loadgen, payloads)
    async with post as send:

        async def worker(index: int, until: float, record: list[tuple[float, str]] | None) -> None:
            conn: Any = None
            k = index
            while time.perf_counter() < until:
                start = time.perf_counter()
                conn, code = await send(conn, k % len(payloads))
                k += clients
                if record is not None:
                    record.append(((time.perf_counter() - start) * 1000, code))

        warm_until = time.perf_counter() + args.warmup
        await asyncio.gather(*(worker(i, warm_until, None) for i in range(clients)))
        print("GO", flush=True)
        record: list[tuple[float, str]] = []
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(i, start + args.duration, record) for i in range(clients)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        print("END", flush=True)
    codes = Counter(code for _, code in record)
    latencies = [ms for ms, code in record if code.startswith("2")]
    report = {"completed": len(record), "elapsed": elapsed, "codes": dict(codes), "cpu": cpu, "latencies_ms": latencies}
    print(json.dumps(report), flush=True)


Sender = Callable[[Any, int], Any]


@asynccontextmanager
async def _httpx_poster(url: str, payloads: list[dict[str, Any]]) -> AsyncIterator[Sender]:
    """httpx.AsyncClient: convenient, but it spends ~4 CPU-ms per request, as much as the server."""
    requests = [
        (json.dumps(p["body"]).encode(), {"Authorization": f"Bearer {p['token']}", "Content-Type": "application/json"})
        for p in payloads
    ]
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=len(payloads))
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def send(conn: Any, index: int) -> tuple[Any, str]:
            body, headers = requests[index]
            try:
                return None, str((await client.post(url, content=body, headers=headers)).status_code)
            except httpx.HTTPError as exc:
                return None, type(exc).__name__

        yield send


@asynccontextmanager
async def _raw_poster(url: str, payloads: list[dict[str, Any]]) -> AsyncIterator[Sender]:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: requests pre-encoded, ~0.2 CPU-ms each."""
    target = httpx.URL(url)
    host, port = target.host, target.port or 80
    requests = []
    for p in payloads:
        body = json.dumps(p["body"]).encode()
        head = (
            f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {p['token']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    opened: list[asyncio.StreamWriter] = []

    async def send(conn: Any, index: int) -> tuple[Any, str]:
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port)
                opened.append(conn[1])
            reader, writer = conn
            writer.write(requests[index])
            status = (await reader.readline()).split(b" ", 2)
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
            code = status[1].decode() if len(status) > 1 else "bad-response"
            if close:
                writer.close()
                conn = None
            return conn, code
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            return None, type(exc).__name__

    try:
        yield send
    finally:
        for writer in opened:
            writer.close()


def _ceiling(r: LoadResult) -> float:
    """Requests/s the measured CPU costs allow: each worker is one core at most; all parties share the cores."""
    done = max(1, r.completed)
    server, total = r.server_cpu / done, (r.server_cpu + r.loadgen_cpu + r.postgres_cpu) / done
    if server <= 0 or total <= 0:
        return float("nan")
    return min(r.workers / server, (psutil.cpu_count() or 1) / total)


def print_run_table(results: list[LoadResult], args: argparse.Namespace) -> bool:
    print(
        f"\nPOST /api/v1/programs/run/ over HTTP: {args.clients} concurrent keep-alive clients ({args.client} client, "
        f"in a separate process on the same {psutil.cpu_count()} cores) for {args.duration:g} s after "
        f"{args.warmup:g} s warm-up."
    )
    print("Baseline 'bare': a FastAPI endpoint doing one INSERT INTO job through SQLAlchemy async, same pool.")
    print("CPU columns are CPU-ms per request: server process(es), load generator, the database's backends;")
    print("'busy' is the whole machine's CPU use during the window (other helpers' work shows there too);")
    print("'conns' counts database connections opened during the window (pool churn); 'ceiling' is the req/s those")
    print("CPU costs allow on this machine with nothing else running: min(workers / srv, cores / (srv + gen + pg)).")
    header = (
        f"{'server':<21}{'app':<24}{'req/s':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'errors':>7}"
        f"{'srv cpu':>8}{'gen cpu':>8}{'pg cpu':>7}{'busy':>6}{'conns':>6}{'ceiling':>8}  target"
    )
    print(header)
    print("-" * len(header))
    passed_any = False
    bare_rps = {r.workers: r.rps for r in results if r.app == "bare"}
    for r in results:
        done = max(1, r.completed)
        name = r.app if not r.what_if else f"gateway+{r.what_if}"
        line = (
            f"{r.label:<21}{name:<24}{r.rps:>7.0f}{statistics.median(r.latencies_ms or [0]):>8.1f}"
            f"{_pct(r.latencies_ms, 0.95):>8.1f}{_pct(r.latencies_ms, 0.99):>8.1f}{r.errors:>7}"
            f"{r.server_cpu * 1000 / done:>8.2f}{r.loadgen_cpu * 1000 / done:>8.2f}"
            f"{r.postgres_cpu * 1000 / done:>7.2f}{r.machine_busy * 100:>5.0f}%{r.new_connections:>6}"
            f"{_ceiling(r):>8.0f}"
        )
        if r.app == "gateway":
            passed = r.rps >= RUN_TARGET_RPS and r.errors == 0
            ratio = f"{r.rps / bare_rps[r.workers]:.2f}x bare" if bare_rps.get(r.workers) else ""
            if r.what_if:
                line += f"  (what-if) {ratio}"
            else:
                passed_any |= passed
                line += f"  {'PASS' if passed else 'FAIL'} (>={RUN_TARGET_RPS:g}/s), {ratio}"
        print(line)
        if len(r.all_rps) > 1:
            print(f"{'':<21}req/s of the {len(r.all_rps)} rounds: {', '.join(f'{x:.0f}' for x in r.all_rps)}")
        if r.errors:
            print(f"{'':<21}status codes: {r.codes}")
    return passed_any


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
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (5_000 if args.quick else 100_000)
    args.requests = args.requests or (50 if args.quick else 200)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    if args.quick and args.warmup == 2.0:
        args.warmup = 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        import uvloop

        uvloop.run(loadgen(args))
        return 0
    server = os.environ.get("GATEWAY_BENCH_DATABASE_URL", DEFAULT_SERVER)
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    url = _with_database(server, name, "postgresql+asyncpg")
    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    rng = random.Random(args.seed)
    if args.nice:
        os.nice(args.nice)
    niceness = f", niceness {os.nice(0)}" if args.nice else ""
    print(f"serverless-gateway bench: {psutil.cpu_count()} cores, {_load()} at start{niceness}")
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
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
            asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
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


def run_throughput(url: str, seed: Seed, work: Path, args: argparse.Namespace, rng: random.Random) -> bool:
    payloads_file = work / "payloads.json"
    payloads_file.write_text(json.dumps(run_payloads(seed, rng)))
    first = seed.users[0]
    env = {
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_DATA_DIR": str(work / "data"),
        "GATEWAY_RUN_ENGINE": "false",
        "GATEWAY_PUBLIC_URL": "http://bench",
        # The per-user active-job check runs as in production; its limit is raised from 100 so that a fast round
        # is never refused, and the jobs each round queues are finished before the next (DbProbe.drain).
        "GATEWAY_MAX_ACTIVE_JOBS_PER_USER": "1000",
        "BENCH_DATABASE_URL": url,
        "BENCH_PROGRAM_ID": str(seed.user_programs[first.id][0]),
        "BENCH_AUTHOR_ID": str(first.id),
    }
    runs = [(app, w, "") for w in [int(w) for w in args.workers.split(",") if w] for app in ("bare", "gateway")]
    runs += [("gateway", 1, what_if) for what_if in args.what_if]
    rounds: dict[tuple[str, int, str], list[LoadResult]] = {run: [] for run in runs}
    started = datetime.now(UTC)
    probe = DbProbe(url)
    try:
        for round_ in range(args.repeat):  # interleaved: a burst of other work hits every configuration alike
            for app, workers, what_if in runs:
                label = f"  load {round_ + 1}/{args.repeat}: {app} {what_if}, {workers} worker(s)"
                print(label, file=sys.stderr, flush=True)
                probe.drain(started)
                result = serve_and_load(
                    app=app,
                    workers=workers,
                    env={**env, "BENCH_WHAT_IF": what_if},
                    payloads_file=payloads_file,
                    args=args,
                    log_dir=work,
                    probe=probe,
                )
                result.what_if = what_if
                rounds[(app, workers, what_if)].append(result)
    finally:
        probe.close()
    results = []
    for repeats in rounds.values():  # the median round by req/s stands for its configuration
        chosen = sorted(repeats, key=lambda r: r.rps)[len(repeats) // 2]
        chosen.all_rps = [r.rps for r in repeats]
        results.append(chosen)
    return print_run_table(results, args)


if __name__ == "__main__":
    sys.exit(main())
