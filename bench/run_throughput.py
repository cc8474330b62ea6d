"""Issue 11's API figures, each beside its baseline in the same run, on one throwaway database.

1. `GET /api/v1/jobs/?limit=10` at 100,000 jobs, in-process, beside the same SQL in raw asyncpg (target <= 2x).
2. `POST /api/v1/programs/run/` on one `serverless-gateway serve` process (engine off) under wrk (32 keep-alive
   connections spread over 16 users), beside a bare FastAPI endpoint doing the same statements in raw asyncpg
   (`bench/run_bare.py`, same loop and HTTP protocol): req/s and their ratio (target >= 0.5x, stretch 0.7x),
   fresh and again once every user has `--queued` jobs waiting (the ratio must hold: flat as queues grow).
3. The gateway's RSS (process and children), idle and after the load.

Usage: `.venv/bin/python -m bench.run_throughput [--duration 10] [--queued 2000] [--profile DIR]`; needs `wrk`
(Debian: `apt-get install wrk`). Database server: GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@
127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from .api_bench import ListCase, measure_lists
from .api_run import DbProbe, Snapshot, _delta, _free_port, _snapshot, _stop, _wait_ready
from .api_seed import (
    DEFAULT_SERVER,
    JOB_COLUMNS,
    ROOT,
    Seed,
    admin_execute,
    job_records,
    plain_url,
    run_migrations,
    seed_accounts,
    seed_jobs,
    with_database,
)

RUN_TARGET, RUN_STRETCH, LIST_TARGET, RSS_TARGET_MIB = 0.5, 0.7, 2.0, 150.0
ACTIVE_CAP = 1_000_000  # GATEWAY_MAX_ACTIVE_JOBS_PER_USER for the bench (default 100): no run is refused
LUA = ROOT / "bench" / "run_wrk.lua"


@dataclass
class Round:
    phase: str
    app: str
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float
    pg_cpu_ms: float
    wrk_cpu_ms: float
    new_connections: int
    load: str

    @property
    def rps(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds if self.seconds else 0.0


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} {five:.2f}"


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its children."""
    root = psutil.Process(pid)
    return float(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])) / 2**20


def write_requests(seed: Seed, n_users: int, path: Path) -> int:
    """The wrk script's requests: each of the first `n_users` users running each of its own programs."""
    config = {"workers": 1, "min_workers": 1, "max_workers": 2, "auto_scaling": False}
    lines = []
    for user in seed.users[:n_users]:
        for title in user.titles:
            body = {"title": title, "arguments": json.dumps({"shots": 1024}), "config": config}
            lines.append(f"{user.token}\t{json.dumps(body)}")
    random.Random(7).shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def wrk(url: str, requests_file: Path, args: argparse.Namespace, seconds: float) -> tuple[dict[str, Any], float]:
    """One wrk run: its done() line and the CPU seconds wrk itself used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(LUA), url, "--", str(requests_file)],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(lines[-1]), cpu


def load_round(
    phase: str, app: str, url: str, server: subprocess.Popen[Any], probe: DbProbe, args: argparse.Namespace,
    requests_file: Path, profile: Path | None,
) -> Round:  # fmt: skip
    """Warm up, then one measured wrk window with the server's and database's CPU sampled around it."""
    wrk(url, requests_file, args, args.warmup)
    handle = psutil.Process(server.pid)
    before: Snapshot = _snapshot(handle, probe)
    spy = _profiler(server.pid, args.duration, profile) if profile else None
    report, wrk_cpu = wrk(url, requests_file, args, args.duration)
    after: Snapshot = _snapshot(handle, probe)
    if spy is not None:
        spy.wait(timeout=60)
    done = max(1, int(report["requests"]))
    errors = sum(int(report[k]) for k in ("connect", "read", "write", "timeout"))
    return Round(
        phase=phase,
        app=app,
        requests=int(report["requests"]),
        seconds=int(report["duration_us"]) / 1e6,
        non_2xx=int(report["non_2xx"]),
        socket_errors=errors,
        p50_ms=int(report["p50_us"]) / 1000,
        p99_ms=int(report["p99_us"]) / 1000,
        server_cpu_ms=_delta(before[0], after[0]) * 1000 / done,
        pg_cpu_ms=_delta(before[1], after[1]) * 1000 / done,
        wrk_cpu_ms=wrk_cpu * 1000 / done,
        new_connections=after[4] - before[4],
        load=load_average(),
    )


def _profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--duration",
         str(max(1, int(seconds))), "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def seed_queued(url: str, seed: Seed, n_users: int, per_user: int, created: datetime) -> None:
    """`per_user` QUEUED jobs for each loaded user, older than the bench's own (so its drains keep them)."""
    records = []
    for user in seed.users[:n_users]:
        program_id = seed.user_programs[user.id][0]
        for _ in range(per_user):
            job_id = uuid.uuid4()
            row = [job_id, program_id, user.id, "QUEUED", "{}", "{}", None, None, None, created, created, None, None]
            records.append(tuple(row))
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.copy_records_to_table("job", records=records, columns=JOB_COLUMNS)
        await conn.execute("VACUUM (ANALYZE) job")
    finally:
        await conn.close()


def start_servers(url: str, work: Path, args: argparse.Namespace) -> tuple[dict[str, str], dict[str, Any]]:
    """`serverless-gateway serve` (engine off) and the bare app, each on a free port: their URLs and processes."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_DATA_DIR": str(work / "data"),
        "GATEWAY_RUN_ENGINE": "false",
        "GATEWAY_PUBLIC_URL": "http://bench",
        "GATEWAY_MAX_ACTIVE_JOBS_PER_USER": str(ACTIVE_CAP),
        "BENCH_DATABASE_URL": plain_url(url),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
    }
    ports = {"gateway": _free_port(), "bare": _free_port()}
    serve = [sys.executable, "-m", "serverless_gateway.cli", "serve"]
    commands = {
        "gateway": [*serve, "--host", "127.0.0.1", "--port", str(ports["gateway"])],
        "bare": [sys.executable, "-m", "bench.run_bare", "--port", str(ports["bare"]), "--limit", str(ACTIVE_CAP)],
    }
    ready = {"gateway": "/api/v1/liveness/", "bare": "/liveness/"}
    paths = {"gateway": "/api/v1/programs/run/", "bare": "/run/"}
    urls, procs = {}, {}
    for app, command in commands.items():
        log_path = work / f"{app}.log"
        app_env = env
        if app == "gateway" and args.gateway_src is not None:  # another checkout's gateway, for a before/after
            app_env = {**env, "PYTHONPATH": os.pathsep.join([str(args.gateway_src.resolve()), env["PYTHONPATH"]])}
        with log_path.open("w") as log:
            procs[app] = subprocess.Popen(command, cwd=ROOT, env=app_env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{ports[app]}"
        _wait_ready(base + ready[app], procs[app], log_path)
        urls[app] = base + paths[app]
    return urls, procs


def run_phases(
    url: str, seed: Seed, work: Path, args: argparse.Namespace
) -> tuple[list[Round], float, float, str]:
    """Both servers under wrk, fresh then with queued jobs: the rounds, RSS idle and after, the gateway's log."""
    requests_file = work / "requests.tsv"
    n = write_requests(seed, args.users, requests_file)
    print(f"  {n} run requests over {args.users} users' own programs", file=sys.stderr)
    started = datetime.now(UTC)
    urls, procs = start_servers(url, work, args)
    rounds: list[Round] = []
    probe = DbProbe(url)
    try:
        time.sleep(2)  # the start-up's garbage and lazy imports settle
        idle_rss = tree_rss_mib(procs["gateway"].pid)
        for phase_index, queued in enumerate([0, args.queued] if args.queued else [0]):
            phase = "fresh" if not queued else f"{queued:,} queued/user"
            if queued:
                asyncio.run(seed_queued(url, seed, args.users, queued, started - timedelta(hours=1)))
            for repeat in range(args.repeat):
                for app in ("bare", "gateway"):
                    print(f"  {phase}, round {repeat + 1}/{args.repeat}: {app}", file=sys.stderr, flush=True)
                    probe.drain(started)
                    first = phase_index == 0 and repeat == 0 and app == "gateway"
                    profile = args.profile / "gateway-run.txt" if args.profile and first else None
                    rounds.append(load_round(phase, app, urls[app], procs[app], probe, args, requests_file, profile))
        loaded_rss = tree_rss_mib(procs["gateway"].pid)
    finally:
        probe.close()
        for proc in procs.values():
            _stop(proc, signal.SIGTERM)
    return rounds, idle_rss, loaded_rss, (work / "gateway.log").read_text(errors="replace")


def median_round(rounds: list[Round], phase: str, app: str) -> Round:
    chosen = sorted((r for r in rounds if r.phase == phase and r.app == app), key=lambda r: r.rps)
    return chosen[len(chosen) // 2]


def report_runs(rounds: list[Round], args: argparse.Namespace) -> bool:
    print(
        f"\nPOST /api/v1/programs/run/: wrk -t{args.threads} -c{args.connections}, {args.duration:g} s after "
        f"{args.warmup:g} s warm-up, {args.users} users; GATEWAY_MAX_ACTIVE_JOBS_PER_USER={ACTIVE_CAP:,} (default "
        f"100) so no run is refused: the bounded active count still runs. 'bare': bench/run_bare.py, raw asyncpg."
    )
    print("CPU columns: ms per request of the server process, the database's backends and wrk; 'conns': database")
    print("connections opened during the window (pool churn: each one a backend fork and a connect).")
    header = (
        f"{'phase':<22}{'app':<9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'non-2xx':>8}{'sock err':>9}"
        f"{'srv cpu':>8}{'pg cpu':>7}{'wrk cpu':>8}{'conns':>6}  {'load':<16}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    phases = list(dict.fromkeys(r.phase for r in rounds))
    for r in rounds:
        line = (
            f"{r.phase:<22}{r.app:<9}{r.rps:>7.0f}{r.p50_ms:>8.1f}{r.p99_ms:>8.1f}{r.non_2xx:>8}{r.socket_errors:>9}"
            f"{r.server_cpu_ms:>8.2f}{r.pg_cpu_ms:>7.2f}{r.wrk_cpu_ms:>8.2f}{r.new_connections:>6}  {r.load:<16}"
        )
        print(line)
    print()
    fresh = {app: median_round(rounds, phases[0], app) for app in ("bare", "gateway")}
    for phase in phases:
        bare, gateway = median_round(rounds, phase, "bare"), median_round(rounds, phase, "gateway")
        ratio = gateway.rps / bare.rps if bare.rps else 0.0
        passed = ratio >= RUN_TARGET and gateway.non_2xx == 0 and gateway.socket_errors == 0
        ok &= passed
        verdict = "PASS" if passed else "FAIL"
        stretch = " (stretch met)" if ratio >= RUN_STRETCH else ""
        trend = ""
        if phase != phases[0]:
            gw_trend, bare_trend = gateway.rps / fresh["gateway"].rps, bare.rps / fresh["bare"].rps
            trend = f"; vs fresh: gateway {gw_trend:.2f}x, bare {bare_trend:.2f}x"
        print(
            f"{phase:<22}gateway {gateway.rps:,.0f} req/s / bare {bare.rps:,.0f} req/s = {ratio:.2f}x  {verdict} "
            f"(>= {RUN_TARGET}x){stretch}{trend}"
        )
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk window")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each window")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--users", type=int, default=16, help="users the run load spreads over")
    parser.add_argument("--all-users", type=int, default=100, help="users seeded (the list's data)")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs seeded before anything is measured")
    parser.add_argument("--queued", type=int, default=2_000, help="queued jobs per user in the second phase (0: none)")
    parser.add_argument("--requests", type=int, default=300, help="measured list requests")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds per phase (the median is judged)")
    parser.add_argument("--only", choices=["list", "run"], help="measure only one of the two")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the gateway's first window into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the database and the servers' logs")
    parser.add_argument(
        "--gateway-src", type=Path, metavar="DIR", help="serve the gateway from this src/ (another checkout's)"
    )
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args(argv)
    args.wrk = shutil.which("wrk")
    if args.wrk is None and args.only != "list":
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = os.environ.get("GATEWAY_BENCH_DATABASE_URL", DEFAULT_SERVER)
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    url = with_database(server, name, "postgresql+asyncpg")
    work = Path(tempfile.mkdtemp(prefix="gw-throughput-"))
    rng = random.Random(args.seed)
    print(f"serverless-gateway run throughput bench: {psutil.cpu_count()} cores, {load_average()} at start")
    asyncio.run(admin_execute(server, f'CREATE DATABASE "{name}"'))
    ok = True
    try:
        run_migrations(url)
        seed = asyncio.run(seed_accounts(url, args.all_users, rng))
        asyncio.run(seed_jobs(url, job_records(seed, args.jobs, rng, datetime.now(UTC))))
        print(f"seeded {args.jobs:,} jobs over {args.all_users} users ({load_average()})")
        if args.only in (None, "list"):
            case = ListCase("limit=10", lambda u, s, r: {"limit": 10})
            (floor, lists) = asyncio.run(measure_lists(url, seed, work / "list-data", args.requests, rng, [case]))
            gw, raw = statistics.median(lists.gateway_ms), statistics.median(lists.raw_ms)
            passed = gw / raw <= LIST_TARGET
            ok &= passed
            print(
                f"\nGET /api/v1/jobs/?limit=10 in-process, {args.requests} requests from random users of "
                f"{args.all_users} ({args.jobs:,} jobs; avg count {lists.mean_count:,.0f}): gateway p50 {gw:.2f} ms, "
                f"raw asyncpg p50 {raw:.2f} ms (the same {lists.statements} statements) = {gw / raw:.2f}x  "
                f"{'PASS' if passed else 'FAIL'} (<= {LIST_TARGET}x); ASGI floor "
                f"{statistics.median(floor.gateway_ms):.2f} ms; {load_average()}"
            )
        if args.only in (None, "run"):
            rounds, idle, loaded, log = run_phases(url, seed, work, args)
            ok &= report_runs(rounds, args)
            passed = idle <= RSS_TARGET_MIB
            ok &= passed
            print(
                f"\ngateway RSS (process + children, engine off): idle {idle:.0f} MiB, after the load "
                f"{loaded:.0f} MiB  {'PASS' if passed else 'FAIL'} (idle <= {RSS_TARGET_MIB:g} MiB)"
            )
            loop = [line for line in log.splitlines() if "event loop" in line]
            print(f"gateway: {loop[0].split(' - ')[-1].strip() if loop else 'no event loop line in its log'}")
    finally:
        if args.keep:
            print(f"\nkept database {url} and logs in {work}")
        else:
            asyncio.run(admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            shutil.rmtree(work, ignore_errors=True)
    print(f"\noverall: {'PASS' if ok else 'FAIL'} ({load_average()} at the end)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
