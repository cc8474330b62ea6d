"""What runs in the bench's subprocesses: the uvicorn app factories and the load generator.

Load generator: `python -m bench.api_load URL --payloads FILE [--duration S --clients N --warmup S --client raw]`
prints `GO` when its measured window starts, `END` when it ends, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import insert

from serverless_gateway.app import create_app
from serverless_gateway.config import load_settings
from serverless_gateway.db import create_engine, create_sessionmaker
from serverless_gateway.models import Job


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


async def loadgen(args: argparse.Namespace) -> None:
    """The load-generator process: `clients` concurrent keep-alive connections; prints GO, END, then JSON."""
    payloads = json.loads(args.payloads.read_text())
    clients: int = args.clients
    post = _raw_poster(args.url, payloads) if args.client == "raw" else _httpx_poster(args.url, payloads)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The bench's load generator (see bench/api_bench.py).")
    parser.add_argument("url")
    parser.add_argument("--payloads", type=Path, required=True, help="JSON list of {token, body}")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(loadgen(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
