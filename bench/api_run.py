"""Run throughput over HTTP: the gateway and a bare baseline under uvicorn, loaded from another process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from .api_seed import ROOT, Seed, plain_url

RUN_TARGET_RPS = 300.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


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
        self._conn: asyncpg.Connection = self._runner.run(asyncpg.connect(plain_url(url)))

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
    factory = "bench.api_load:make_gateway_app" if app == "gateway" else "bench.api_load:make_bare_app"
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
                [sys.executable, "-m", "bench.api_load", url + path, "--payloads", str(payloads_file),
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
            f"{percentile(r.latencies_ms, 0.95):>8.1f}{percentile(r.latencies_ms, 0.99):>8.1f}{r.errors:>7}"
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
            rounds = ", ".join(f"{x:.0f}" for x in r.all_rps)
            print(f"{'':<21}req/s of the {len(r.all_rps)} rounds: {rounds} (the row shows the median round)")
        if r.errors:
            print(f"{'':<21}status codes: {r.codes}")
    return passed_any


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
