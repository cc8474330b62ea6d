"""What hostile requests cost a real gateway: its RSS growth and liveness latency under each attack, beside idle.

Usage: `.venv/bin/python -m bench.hostile_bench [--only NAME ...] [--probe-interval 0.05]`.
It creates a throwaway database on GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/
postgres), starts `uvicorn --factory bench.hostile_bench:make_app` (engine off: these attacks need no Ray),
measures the idle baseline, runs each attack while sampling the gateway's RSS and probing `/api/v1/liveness/`,
prints one line per attack, and drops the database. Targets (issue 10): each attack grows the RSS by less
than 16 MiB and every liveness answer during it takes less than 100 ms; a miss exits 1.

Adding an attack: write `async def my_attack(target: Target) -> str` (it returns what the gateway answered, in
a few words) and decorate it with `@attack("what it does")`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from fastapi import FastAPI

from bench import engine_bench
from bench.engine_bench import Database, tar_of
from serverless_gateway.app import create_app
from serverless_gateway.config import load_settings
from serverless_gateway.engine.local_ray import free_port

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CHUNK = bytes(MIB)
RSS_TARGET_MIB = 16.0
LIVENESS_TARGET_MS = 100.0


def make_app() -> FastAPI:
    """The gateway process of the bench: the real app, engine off."""
    return create_app(load_settings(), start_engine=False)


@dataclass
class Target:
    """What an attack may use: the gateway's URL and a valid user token."""

    url: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


AttackFn = Callable[[Target], Awaitable[str]]


@dataclass
class Attack:
    name: str
    run: AttackFn


ATTACKS: list[Attack] = []


def attack(name: str) -> Callable[[AttackFn], AttackFn]:
    """Register an attack under a short name (shown in the report, matched by `--only`)."""

    def register(fn: AttackFn) -> AttackFn:
        ATTACKS.append(Attack(name, fn))
        return fn

    return register


async def streamed(total: int, head: bytes = b"") -> AsyncIterator[bytes]:
    """`total` bytes sent in 1 MiB chunks of one buffer: the attacker's memory never holds the body."""
    yield head
    sent = 0
    while sent < total:
        sent += len(CHUNK)
        yield CHUNK


async def upload(http: httpx.AsyncClient, token: str, title: str, **fields: str) -> None:
    response = await http.post(
        "/api/v1/programs/upload/",
        headers={"Authorization": f"Bearer {token}"},
        data={"title": title, "entrypoint": "main.py", **fields},
        files={"artifact": ("a.tar", tar_of({"main.py": "print(1)\n"}), "application/x-tar")},
    )
    response.raise_for_status()


def _outcome(response: httpx.Response, started: float) -> str:
    message = ""
    try:
        message = str(response.json().get("message", ""))[:110]
    except ValueError:
        pass
    return f"{response.status_code} in {time.monotonic() - started:.2f} s ({message})"


async def _post(target: Target, path: str, *, headers: dict[str, str], content: AsyncIterator[bytes]) -> str:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=target.url, timeout=120) as http:
        try:
            response = await http.post(path, headers=headers, content=content)
        except httpx.HTTPError as exc:
            return f"connection error after {time.monotonic() - started:.2f} s ({type(exc).__name__})"
    return _outcome(response, started)


@attack("anonymous 256 MiB body to programs/run/ (chunked)")
async def anonymous_run_body(target: Target) -> str:
    headers = {"Content-Type": "application/json"}
    return await _post(target, "/api/v1/programs/run/", headers=headers, content=streamed(256 * MIB, b'{"a": "'))


@attack("authenticated 256 MiB body to programs/run/ (chunked)")
async def authenticated_run_body(target: Target) -> str:
    headers = {**target.auth, "Content-Type": "application/json"}
    return await _post(target, "/api/v1/programs/run/", headers=headers, content=streamed(256 * MIB, b'{"a": "'))


@attack("authenticated 256 MiB artifact upload (Content-Length)")
async def authenticated_upload_body(target: Target) -> str:
    headers = {**target.auth, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(256 * MIB)}
    return await _post(target, "/api/v1/programs/upload/", headers=headers, content=streamed(256 * MIB))


@attack("8 x validate_arguments on pattern ^(a+)+$ with 'a'*34+'!'")
async def redos_validate(target: Target) -> str:
    async with httpx.AsyncClient(base_url=target.url, timeout=120) as http:
        schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
        await upload(http, target.token, "redos", arguments_schema=json.dumps(schema))
        body = {"title": "redos", "arguments": json.dumps({"s": "a" * 34 + "!"})}
        started = time.monotonic()
        answers = await asyncio.gather(
            *(http.post("/api/v1/programs/validate_arguments/", headers=target.auth, json=body) for _ in range(8))
        )
    codes = sorted({answer.status_code for answer in answers})
    return f"{codes} in {time.monotonic() - started:.2f} s"


@dataclass
class Watch:
    """The gateway's RSS (peak) and liveness latencies, sampled while something runs."""

    process: psutil.Process
    url: str
    interval: float
    latencies: list[float] = field(default_factory=list)
    peak_rss: int = 0
    failures: int = 0

    async def _probe(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    (await http.get("/api/v1/liveness/")).raise_for_status()
                    self.latencies.append(time.monotonic() - started)
                except httpx.HTTPError:
                    self.failures += 1
                await asyncio.sleep(self.interval)

    async def _sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            await asyncio.sleep(0.02)

    async def during(self, work: Awaitable[str]) -> str:
        stop = asyncio.Event()
        watchers = [asyncio.create_task(self._probe(stop)), asyncio.create_task(self._sample(stop))]
        try:
            return await work
        finally:
            stop.set()
            await asyncio.gather(*watchers)

    def missed(self, rss_before: int) -> bool:
        """Over a target: RSS growth of 16 MiB, a liveness answer of 100 ms, or a probe that failed."""
        slowest = max(self.latencies, default=0.0) * 1000
        growth = (self.peak_rss - rss_before) / MIB
        return growth >= RSS_TARGET_MIB or slowest >= LIVENESS_TARGET_MS or self.failures > 0

    def line(self, name: str, rss_before: int, outcome: str) -> str:
        ms = sorted(latency * 1000 for latency in self.latencies) or [float("nan")]
        growth = (self.peak_rss - rss_before) / MIB
        failed = f", {self.failures} probes failed" if self.failures else ""
        mark = "  MISSED" if self.missed(rss_before) else ""
        return (
            f"{name:<58} RSS +{growth:7.1f} MiB  liveness p50 {statistics.median(ms):6.1f} ms"
            f"  max {ms[-1]:7.1f} ms{failed}{mark}\n    -> {outcome}"
        )


class Gateway(engine_bench.Gateway):
    """`uvicorn --factory bench.hostile_bench:make_app` in its own process, engine off."""

    def __init__(self, db: Database, work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "gateway.log"
        env = {**os.environ, "GATEWAY_DATABASE_URL": db.async_url, "GATEWAY_DATA_DIR": str(work / "data")}
        env.update({"GATEWAY_RUN_ENGINE": "false", "GATEWAY_PUBLIC_URL": self.url})
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench.hostile_bench:make_app", "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=log)
        self.ps = psutil.Process(self.process.pid)


async def idle_pause(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"{seconds:.0f} s of nothing"


async def main(only: list[str], interval: float) -> bool:
    """Run the baseline and the attacks; True when every attack stayed within the targets."""
    passed = True
    db = Database()
    await db.create()
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        gateway = Gateway(db, Path(tmp))
        try:
            await gateway.ready()
            target = Target(url=gateway.url, token=await db.user("attacker"))
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
                await upload(http, target.token, "warm")  # first requests build caches
            print(f"gateway pid {gateway.process.pid} on {gateway.url}; load {psutil.getloadavg()}", flush=True)
            rss = gateway.ps.memory_info().rss
            watch = Watch(gateway.ps, gateway.url, interval)
            print(watch.line("idle baseline", rss, await watch.during(idle_pause(3))), flush=True)
            for item in ATTACKS:
                if only and not any(word.lower() in item.name.lower() for word in only):
                    continue
                rss = gateway.ps.memory_info().rss
                watch = Watch(gateway.ps, gateway.url, interval)
                print(watch.line(item.name, rss, await watch.during(item.run(target))), flush=True)
                passed = passed and not watch.missed(rss)
        finally:
            gateway.stop()
            await db.drop()
    return passed


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="*", default=[], help="run only the attacks whose name holds one of these")
    parser.add_argument("--probe-interval", type=float, default=0.05, help="seconds between liveness probes")
    args = parser.parse_args()
    if not asyncio.run(main(args.only, args.probe_interval)):
        print(f"MISSED: an attack grew the RSS by {RSS_TARGET_MIB:.0f} MiB or more, or slowed liveness past "
              f"{LIVENESS_TARGET_MS:.0f} ms (on a loaded machine, run it again)")
        sys.exit(1)


if __name__ == "__main__":
    cli()
