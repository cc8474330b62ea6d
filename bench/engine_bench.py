"""Speed of the execution engine, each figure beside a baseline measured in the same run (issues 3 and 11).

(a) dispatch: from the run request's answer until GET /jobs/{id} shows the job no longer QUEUED (what a client
    sees; target <= 30 ms), and until Ray receives the submission (Ray's job `start_time`), beside a direct
    `JobSubmissionClient.submit_job` call measured the same way (call start -> `start_time`);
(b) turnaround of a trivial job through the gateway (run -> SUCCEEDED seen by polling GET /jobs/{id}) beside the
    same program submitted straight to Ray (submit -> SUCCEEDED seen by polling Ray), interleaved pairs, both
    polled every 20 ms; the per-job overhead is the median of (gateway - direct) over the pairs (target <= 50 ms);
(c) makespan of 50 trivial jobs started at once, gateway beside direct-to-Ray (target ratio <= 1.03);
(d) gateway CPU while 500 jobs are RUNNING and synced (against `bench/fake_ray.py`, since 500 real Ray jobs need
    ~1,000 processes), beside the same gateway idle;
(e) the gateway's RSS (its process and children) idle and after 1,000 jobs went through it (Ray stand-in).

The gateway runs as its own process (uvicorn) with a private local Ray head and a throwaway database on
GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
Usage: `.venv/bin/python -m bench.engine_bench [--repeat 10] [--burst 50] [--running 500] [--jobs 1000]
[--only a,b,c,d,e]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from alembic import command
from ray.job_submission import JobSubmissionClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from bench.fake_ray import FakeRay
from serverless_gateway.db import create_engine, create_sessionmaker
from serverless_gateway.engine.local_ray import LocalRayHead, free_port
from serverless_gateway.models import Job
from serverless_gateway.schema import alembic_config
from serverless_gateway.services import accounts

ROOT = Path(__file__).resolve().parent.parent
TRIVIAL = "print('hello from a trivial job')\n"
POLL = 0.02
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class Database:
    def __init__(self) -> None:
        server = os.environ.get("GATEWAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
        self.admin = make_url(server).set(drivername="postgresql", database="postgres")
        self.name = f"gw_engine_bench_{uuid.uuid4().hex[:8]}"
        self.url = make_url(server).set(drivername="postgresql+asyncpg", database=self.name)

    @property
    def async_url(self) -> str:
        return self.url.render_as_string(hide_password=False)

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin.render_as_string(hide_password=False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.name}"')
        await asyncio.to_thread(command.upgrade, alembic_config(self.async_url), "head")

    async def drop(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def user(self, name: str) -> str:
        engine = create_engine(self.async_url, pool_size=1)
        try:
            async with create_sessionmaker(engine).begin() as session:
                _, token = await accounts.create_user(session, username=name)
        finally:
            await engine.dispose()
        return token

    async def count(self, status: str) -> int:
        engine = create_engine(self.async_url, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session:
                return int(await session.scalar(select(func.count()).where(Job.status == status)) or 0)
        finally:
            await engine.dispose()


class Gateway:
    """`uvicorn --factory bench.engine_app:make_app` in its own process."""

    def __init__(self, db: Database, ray_address: str, work: Path, **settings: object):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"gateway-{self.port}.log"
        env = {**os.environ, "GATEWAY_DATABASE_URL": db.async_url, "GATEWAY_RAY_ADDRESS": ray_address}
        env.update({"GATEWAY_PUBLIC_URL": self.url, "GATEWAY_DATA_DIR": str(work / f"data-{self.port}")})
        env.update({f"GATEWAY_{key.upper()}": str(value) for key, value in settings.items()})
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench.engine_app:make_app", "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=log)
        self.ps = psutil.Process(self.process.pid)

    async def ready(self) -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                if self.process.poll() is not None:
                    raise RuntimeError(self.log.read_text()[-2000:])
                try:
                    if (await http.get(f"{self.url}/readiness/")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("the gateway never became ready")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def tar_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def upload(http: httpx.AsyncClient, token: str, title: str, program: str) -> None:
    response = await http.post(
        "/api/v1/programs/upload/",
        headers={"Authorization": f"Bearer {token}"},
        data={"title": title, "entrypoint": "main.py"},
        files={"artifact": ("a.tar", tar_of({"main.py": program}), "application/x-tar")},
    )
    response.raise_for_status()


async def run(http: httpx.AsyncClient, token: str, title: str) -> str:
    response = await http.post(
        "/api/v1/programs/run/", headers={"Authorization": f"Bearer {token}"}, json={"title": title, "arguments": {}}
    )
    response.raise_for_status()
    return str(response.json()["id"])


async def gateway_status(http: httpx.AsyncClient, token: str, job_id: str) -> str:
    response = await http.get(
        f"/api/v1/jobs/{job_id}/", params={"with_result": "false"}, headers={"Authorization": f"Bearer {token}"}
    )
    return str(response.json()["status"])


class Direct:
    """The baseline: the same program submitted straight to Ray, from threads (the client is synchronous).

    Its status is polled with the same HTTP client as the gateway's (httpx, Ray's `GET /api/jobs/{id}`): on two
    cores the poller's own CPU slows down the job it watches, so both sides must pay the same for a poll.
    """

    def __init__(self, address: str, work: Path, headers: dict[str, str] | None = None):
        self.client = JobSubmissionClient(address, headers=headers)
        self.http = httpx.AsyncClient(base_url=address, timeout=60, headers=headers)
        self.dir = work / "direct-program"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "main.py").write_text(TRIVIAL)
        self.pool = ThreadPoolExecutor(16)

    def submit(self) -> tuple[str, float]:
        started = time.time()
        sid = self.client.submit_job(
            entrypoint="python main.py",
            runtime_env={"working_dir": str(self.dir), "env_vars": {"BENCH_ID": uuid.uuid4().hex}},
        )
        return str(sid), started

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def status(self, sid: str) -> str:
        response = await self.http.get(f"/api/jobs/{sid}")
        response.raise_for_status()
        return str(response.json()["status"])

    async def forget(self, *sids: str) -> None:
        """Delete finished jobs from Ray (untimed), as the gateway's engine does with its own: a cluster full of
        the baseline's old jobs would make every `list_jobs` of the gateway's sync passes dearer."""
        for sid in sids:
            (await self.http.delete(f"/api/jobs/{sid}")).raise_for_status()

    async def statuses(self) -> dict[str, str]:
        response = await self.http.get("/api/jobs/")
        response.raise_for_status()
        return {str(job["submission_id"]): str(job["status"]) for job in response.json()}

    async def start_time(self, sid: str) -> float | None:
        try:
            info = await self.call(self.client.get_job_info, sid)
        except RuntimeError:
            return None
        return float(info.start_time) / 1000 if info.start_time else None


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def bench_dispatch(
    http: httpx.AsyncClient, token: str, direct: Direct, db: Database, repeat: int
) -> dict[str, float]:
    gateway: list[float] = []
    visible: list[float] = []
    baseline: list[float] = []
    conn = await asyncpg.connect(db.url.set(drivername="postgresql").render_as_string(hide_password=False))
    submitted = "SELECT submitted_at IS NOT NULL FROM job WHERE id = $1"
    for _ in range(repeat):
        job_id = await run(http, token, "trivial")
        answered = time.time()
        # What a client sees: the job no longer QUEUED, read through the API as any client would (every 5 ms).
        while await gateway_status(http, token, job_id) == "QUEUED":
            await asyncio.sleep(0.005)
        visible.append(time.time() - answered)
        # Watch the database, not Ray: polling Ray's dashboard would slow down the very submission measured.
        while not await conn.fetchval(submitted, uuid.UUID(job_id)):
            await asyncio.sleep(0.005)
        start = await direct.start_time(f"gw-{job_id}")
        assert start is not None
        gateway.append(start - answered)
        while await gateway_status(http, token, job_id) not in TERMINAL:
            await asyncio.sleep(0.1)
        sid, called = await direct.call(direct.submit)
        baseline.append((await direct.start_time(sid) or called) - called)
        while await direct.status(sid) not in TERMINAL:
            await asyncio.sleep(0.1)
        await direct.forget(sid)
    await conn.close()
    return {"gateway_ms": median_ms(gateway), "direct_ms": median_ms(baseline), "visible_ms": median_ms(visible)}


async def bench_turnaround(http: httpx.AsyncClient, token: str, direct: Direct, repeat: int) -> dict[str, float]:
    gateway: list[float] = []
    baseline: list[float] = []
    for _ in range(repeat):
        started = time.time()
        job_id = await run(http, token, "trivial")
        while (status := await gateway_status(http, token, job_id)) not in TERMINAL:
            await asyncio.sleep(POLL)
        assert status == "SUCCEEDED", status
        gateway.append(time.time() - started)
        started = time.time()
        sid, _ = await direct.call(direct.submit)
        while (status := await direct.status(sid)) not in TERMINAL:
            await asyncio.sleep(POLL)
        assert status == "SUCCEEDED", status
        baseline.append(time.time() - started)
        await direct.forget(sid)
    overheads = [mine - theirs for mine, theirs in zip(gateway, baseline, strict=True)]
    return {
        "gateway_s": statistics.median(gateway),
        "direct_s": statistics.median(baseline),
        "overhead_ms": median_ms(overheads),
    }


async def gateway_makespan(http: httpx.AsyncClient, token: str, burst: int) -> float:
    started = time.time()
    job_ids = set(await asyncio.gather(*(run(http, token, "trivial") for _ in range(burst))))
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        page = (await http.get("/api/v1/jobs/", params={"limit": 100}, headers=headers)).json()["results"]
        if sum(1 for job in page if job["id"] in job_ids and job["status"] in TERMINAL) == burst:
            return time.time() - started
        await asyncio.sleep(0.1)


async def direct_makespan(direct: Direct, burst: int) -> float:
    started = time.time()
    sids = set(await asyncio.gather(*(direct.call(lambda: direct.submit()[0]) for _ in range(burst))))
    while True:
        jobs = await direct.statuses()
        if sum(1 for sid, status in jobs.items() if sid in sids and status in TERMINAL) == burst:
            elapsed = time.time() - started
            await direct.forget(*sids)
            return elapsed
        await asyncio.sleep(0.1)


async def bench_makespan(http: httpx.AsyncClient, token: str, direct: Direct, burst: int) -> dict[str, float]:
    """Direct, gateway, direct again: the baseline is the mean of the two direct runs (the machine's load drifts)."""
    before = await direct_makespan(direct, burst)
    gateway = await gateway_makespan(http, token, burst)
    after = await direct_makespan(direct, burst)
    return {"gateway_s": gateway, "direct_s": (before + after) / 2, "direct_before_s": before, "direct_after_s": after}


@contextlib.asynccontextmanager
async def against_fake_ray(
    db: Database, work: Path, fake: FakeRay, users: list[str], program: str, **limits: object
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient, list[str]]]:
    """A gateway on `fake` (a Ray stand-in) with `users` who each uploaded `program`; both stop at the end."""
    address = fake.start(free_port())
    gateway = Gateway(db, address, work, **limits)
    tokens = [await db.user(name) for name in users]
    try:
        await gateway.ready()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            for token in tokens:
                await upload(http, token, program, TRIVIAL)
            yield gateway, http, tokens
    finally:
        gateway.stop()
        fake.stop_server()


async def bench_sync_cpu(db: Database, work: Path, running: int, window: float) -> dict[str, float]:
    fake = FakeRay()
    users = [f"cpu-{index}" for index in range((running + 99) // 100)]
    limits = {"max_running_jobs": running + 100, "max_running_jobs_per_user": running + 100}
    async with against_fake_ray(db, work, fake, users, "forever", **limits) as (gateway, http, gateway_users):
        await asyncio.sleep(2)
        before, lists_before = gateway.cpu_seconds(), fake.calls["list"]
        await asyncio.sleep(window)
        idle = (gateway.cpu_seconds() - before) / window
        idle_lists = (fake.calls["list"] - lists_before) / window
        for start in range(0, running, 50):
            batch = range(start, min(running, start + 50))
            await asyncio.gather(*(run(http, gateway_users[i // 100], "forever") for i in batch))
        while await db.count("RUNNING") < running:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        before, lists_before = gateway.cpu_seconds(), fake.calls["list"]
        await asyncio.sleep(window)
        busy = (gateway.cpu_seconds() - before) / window
        busy_lists = (fake.calls["list"] - lists_before) / window
    return {"idle_cpu": idle, "busy_cpu": busy, "idle_lists": idle_lists, "busy_lists": busy_lists}


def tree_rss_mib(process: psutil.Process) -> float:
    """Resident memory of the gateway's process and its children (not Ray's, not PostgreSQL's)."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / (1024 * 1024)


async def bench_memory(db: Database, work: Path, jobs: int) -> dict[str, float]:
    """The gateway's RSS idle, then after `jobs` jobs went through it (a Ray stand-in finishes each in 0.2 s)."""
    users = [f"rss-{index}" for index in range(10)]
    limits = {"max_running_jobs": 200, "max_running_jobs_per_user": 200}
    fake = FakeRay(succeed_after=0.2)
    async with against_fake_ray(db, work, fake, users, "quick", **limits) as (gateway, http, tokens):
        await asyncio.sleep(3)
        idle = tree_rss_mib(gateway.ps)
        started = time.time()
        for start in range(0, jobs, 50):
            await asyncio.gather(*(run(http, tokens[i % len(tokens)], "quick") for i in range(start, start + 50)))
        while await db.count("SUCCEEDED") < jobs:
            await asyncio.sleep(0.5)
        elapsed = time.time() - started
        await asyncio.sleep(3)
        after = tree_rss_mib(gateway.ps)
    return {"idle_mib": idle, "after_mib": after, "jobs": float(jobs), "seconds": elapsed}


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"\nengine bench (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    if "a" in results:
        a = results["a"]
        print(
            f"(a) run answered -> status no longer QUEUED through the API, median of {args.repeat}: "
            f"{a['visible_ms']:.1f} ms (target <= 30 ms)"
        )
        print(
            f"    run answered -> Ray start_time: gateway {a['gateway_ms']:.1f} ms | direct submit call -> Ray "
            f"start_time {a['direct_ms']:.1f} ms"
        )
    if "b" in results:
        b = results["b"]
        ratio = b["gateway_s"] / b["direct_s"]
        print(
            f"(b) trivial job turnaround, interleaved pairs polled every {POLL * 1000:.0f} ms, median of "
            f"{args.repeat}: gateway {b['gateway_s']:.3f} s | direct {b['direct_s']:.3f} s | ratio {ratio:.3f} | "
            f"per-job overhead (median of gateway - direct per pair) {b['overhead_ms']:+.0f} ms (target <= 50 ms)"
        )
    if "c" in results:
        c = results["c"]
        ratio = c["gateway_s"] / c["direct_s"]
        print(
            f"(c) {args.burst} jobs at once, makespan: gateway {c['gateway_s']:.1f} s | direct {c['direct_s']:.1f} s"
            f" (mean of {c['direct_before_s']:.1f} s before and {c['direct_after_s']:.1f} s after)"
            f" | ratio {ratio:.3f} (target <= 1.03)"
        )
    if "d" in results:
        d = results["d"]
        print(
            f"(d) gateway CPU with {args.running} RUNNING jobs synced: {d['busy_cpu'] * 100:.1f}% of a core "
            f"({d['busy_lists']:.1f} Ray list calls/s) | idle gateway {d['idle_cpu'] * 100:.1f}% "
            f"({d['idle_lists']:.2f} list calls/s)"
        )
    if "e" in results:
        e = results["e"]
        print(
            f"(e) gateway RSS (process and children): idle {e['idle_mib']:.0f} MiB | after {e['jobs']:.0f} jobs "
            f"({e['seconds']:.0f} s, Ray stand-in) {e['after_mib']:.0f} MiB (target <= 150 MiB)"
        )


async def main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    db = Database()
    await db.create()
    work = Path(tempfile.mkdtemp(prefix="gw-engine-bench-"))
    if args.keep_logs:
        os.environ["BENCH_ENGINE_DEBUG"] = "1"
        print(f"gateway logs in {work}")
    results: dict[str, dict[str, float]] = {}
    try:
        if only & {"a", "b", "c"}:
            head = LocalRayHead(work / "ray")
            address = await head.start()
            limits = {"max_running_jobs": 128, "max_running_jobs_per_user": 128, "max_active_jobs_per_user": 1000}
            gateway = Gateway(db, address, work, **limits)
            try:
                await gateway.ready()
                token = await db.user("bench")
                direct = Direct(address, work)
                async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
                    await upload(http, token, "trivial", TRIVIAL)
                    await bench_turnaround(http, token, direct, 1)  # warm both paths (packages, workers)
                    if "a" in only:
                        results["a"] = await bench_dispatch(http, token, direct, db, args.repeat)
                    if "b" in only:
                        results["b"] = await bench_turnaround(http, token, direct, args.repeat)
                    if "c" in only:
                        results["c"] = await bench_makespan(http, token, direct, args.burst)
                await direct.http.aclose()
            finally:
                gateway.stop()
                await head.stop()
        if "d" in only:
            results["d"] = await bench_sync_cpu(db, work, args.running, args.window)
        if "e" in only:
            results["e"] = await bench_memory(db, work, args.jobs)
    finally:
        await db.drop()
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="samples for (a) and (b)")
    parser.add_argument("--burst", type=int, default=50, help="jobs started at once for (c)")
    parser.add_argument("--running", type=int, default=500, help="RUNNING jobs for (d)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of CPU measurement for (d)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs put through the gateway for (e)")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--keep-logs", action="store_true", help="keep the gateway logs (engine timings at DEBUG)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
