"""Throughput and memory of the storage backends beside plain baselines measured in the same run.

For each backend a generated stream (default 1 GiB, never held in memory) is uploaded with `put_stream` and
read back with `open_stream`, and the same bytes go through a baseline:
- local: a plain `shutil.copyfileobj` into a file (fsync'd, like the backend) and back out of it;
- s3: aioboto3's own managed transfers (`upload_fileobj` / `download_fileobj`) against the same endpoint.
The S3 endpoint is moto's server in a child process (moto keeps objects in its own memory), so the peak RSS
increase reported is this process's alone: the figure the gateway process would show.

Usage: `.venv/bin/python -m bench.storage_bench [--size 1GiB] [--chunk 64KiB] [--part-size 8MiB] [--only s3]
[--repeat N]`; a quick check: `--size 64MiB`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aioboto3
import psutil

from serverless_gateway.storage.local import LocalStorage
from serverless_gateway.storage.s3 import DEFAULT_PART_SIZE, S3Storage

MIB = 1024 * 1024
RSS_BUDGET = 64 * MIB
REGION = "us-east-1"
BUCKET = "bench"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1GiB, 256MiB, 64KiB)")
    units = {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB}
    return int(match.group(1)) * units[(match.group(2) or "b").lower()]


class RssPeak:
    """Samples this process's RSS in a background thread; `increase` is the peak above the value at entry."""

    def __init__(self, interval: float = 0.005):
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssPeak:
        self.start = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.start


class Generated:
    """`size` bytes made of one random block repeated; as an async chunk stream or a file-like `read`."""

    def __init__(self, size: int, chunk: int):
        self.size = size
        self.chunk = chunk
        self._block = os.urandom(chunk)
        self._left = size

    async def stream(self) -> AsyncIterator[bytes]:
        left = self.size
        while left > 0:
            n = min(self.chunk, left)
            left -= n
            yield self._block if n == self.chunk else self._block[:n]

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        n = min(n, self.chunk)
        self._left -= n
        return self._block if n == self.chunk else self._block[:n]


class NullSink:
    """A binary file that forgets what it is given."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return len(data)


@dataclass
class Measure:
    seconds: float
    bytes: int
    rss_increase: int
    cpu_seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds else float("inf")


async def measure(action: Callable[[], Awaitable[int]]) -> Measure:
    process = psutil.Process()
    cpu_before = sum(process.cpu_times()[:2])
    with RssPeak() as rss:
        started = time.perf_counter()
        moved = await action()
        seconds = time.perf_counter() - started
    return Measure(seconds, moved, rss.increase, sum(process.cpu_times()[:2]) - cpu_before)


async def drain(chunks: AsyncIterator[bytes]) -> int:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
    return total


@dataclass
class Row:
    backend: str
    operation: str
    ours: Measure
    baseline: Measure


def bench_local(size: int, chunk: int, workdir: Path) -> Iterator[Awaitable[Row]]:
    storage = LocalStorage(workdir / "store")
    plain = workdir / "plain.bin"

    async def upload() -> Row:
        await storage.check()
        ours = await measure(lambda: storage.put_stream("bench/blob.bin", Generated(size, chunk).stream()))

        def copy_in() -> int:
            with open(plain, "wb") as out:
                shutil.copyfileobj(Generated(size, chunk), out, chunk)
                out.flush()
                os.fsync(out.fileno())
            return size

        baseline = await measure(lambda: asyncio.to_thread(copy_in))
        return Row("local", "upload", ours, baseline)

    async def download() -> Row:
        ours = await measure(lambda: drain(storage.open_stream("bench/blob.bin")))

        def copy_out() -> int:
            sink = NullSink()
            with open(plain, "rb") as source:
                shutil.copyfileobj(source, sink, chunk)
            return sink.written

        baseline = await measure(lambda: asyncio.to_thread(copy_out))
        plain.unlink()
        await storage.delete("bench/blob.bin")
        return Row("local", "download", ours, baseline)

    yield upload()
    yield download()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in a child process, so the objects it keeps in memory are not counted as ours."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def bench_s3(size: int, chunk: int, part_size: int, in_flight: int, endpoint: str) -> list[Row]:
    # moto accepts any credentials; never ask the instance metadata service for real ones.
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(name, value)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    session = aioboto3.Session(region_name=REGION)
    async with session.client("s3", endpoint_url=endpoint) as client:
        await client.create_bucket(Bucket=BUCKET)
    storage = await S3Storage.open(
        bucket=BUCKET,
        prefix="ours",
        endpoint_url=endpoint,
        region=REGION,
        part_size=part_size,
        parts_in_flight=in_flight,
    )
    rows: list[Row] = []
    try:
        await storage.check()
        up = await measure(lambda: storage.put_stream("blob.bin", Generated(size, chunk).stream()))
        down = await measure(lambda: drain(storage.open_stream("blob.bin")))
        await storage.delete("blob.bin")
    finally:
        await storage.close()

    async with session.client("s3", endpoint_url=endpoint) as client:
        key = f"baseline/{uuid.uuid4().hex}"

        async def upload_direct() -> int:
            await client.upload_fileobj(Generated(size, chunk), BUCKET, key)
            return size

        async def download_direct() -> int:
            sink = NullSink()
            await client.download_fileobj(BUCKET, key, sink)
            return sink.written

        base_up = await measure(upload_direct)
        base_down = await measure(download_direct)
        await client.delete_object(Bucket=BUCKET, Key=key)
    rows.append(Row("s3 (moto)", "upload", up, base_up))
    rows.append(Row("s3 (moto)", "download", down, base_down))
    return rows


def report(rows: list[Row], size: int) -> None:
    print(f"\nstream of {size / MIB:.0f} MiB; peak RSS increase of this process during each transfer\n")
    header = (
        f"{'backend':<10} {'op':<9} {'ours MB/s':>10} {'base MB/s':>10} {'ratio':>6} "
        f"{'ours RSS+':>10} {'base RSS+':>10} {'ours CPU%':>10} {'base CPU%':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row.ours.mb_per_s / row.baseline.mb_per_s
        print(
            f"{row.backend:<10} {row.operation:<9} {row.ours.mb_per_s:>10.1f} {row.baseline.mb_per_s:>10.1f} "
            f"{ratio:>6.2f} {row.ours.rss_increase / MIB:>8.1f}Mi {row.baseline.rss_increase / MIB:>8.1f}Mi "
            f"{100 * row.ours.cpu_seconds / row.ours.seconds:>10.0f} "
            f"{100 * row.baseline.cpu_seconds / row.baseline.seconds:>10.0f}"
        )
    worst = max(row.ours.rss_increase for row in rows)
    verdict = "within" if worst < RSS_BUDGET else "OVER"
    print(
        f"\nlargest RSS increase through our backends: {worst / MIB:.1f} MiB "
        f"({verdict} the {RSS_BUDGET // MIB} MiB budget)"
    )
    print("MB/s here is MiB/s; the S3 figures are bound by moto (a Python server), not by the network.")


def combine(a: Measure, b: Measure) -> Measure:
    """The faster run's time (this machine is shared, so the best run is the least disturbed) and the larger RSS."""
    fast = a if a.seconds <= b.seconds else b
    return Measure(fast.seconds, fast.bytes, max(a.rss_increase, b.rss_increase), fast.cpu_seconds)


async def run_once(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    if args.only in (None, "local"):
        with tempfile.TemporaryDirectory(prefix="storage-bench-", dir=args.dir) as workdir:
            for step in bench_local(args.size, args.chunk, Path(workdir)):
                rows.append(await step)
                print(f"  done: {rows[-1].backend} {rows[-1].operation}", flush=True)
    if args.only in (None, "s3"):
        with moto_server() as endpoint:
            rows.extend(await bench_s3(args.size, args.chunk, args.part_size, args.parts_in_flight, endpoint))
            print("  done: s3", flush=True)
    return rows


async def run(args: argparse.Namespace) -> None:
    best: list[Row] = []
    for attempt in range(args.repeat):
        rows = await run_once(args)
        if attempt == 0:
            best = rows
        else:
            best = [
                Row(old.backend, old.operation, combine(old.ours, new.ours), combine(old.baseline, new.baseline))
                for old, new in zip(best, rows, strict=True)
            ]
    report(best, args.size)
    if args.repeat > 1:
        print(f"best of {args.repeat} runs for MB/s; RSS is the largest seen in any run.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=1024 * MIB, help="bytes per transfer (default 1GiB)")
    parser.add_argument("--chunk", type=parse_size, default=64 * 1024, help="chunk of the generated stream (64KiB)")
    parser.add_argument("--part-size", type=parse_size, default=DEFAULT_PART_SIZE, help="S3 part size (8MiB)")
    parser.add_argument("--parts-in-flight", type=int, default=1, help="S3 parts sent at once (1)")
    parser.add_argument("--only", choices=["local", "s3"], help="one backend only")
    parser.add_argument("--repeat", type=int, default=1, help="run everything N times, report the best")
    parser.add_argument("--dir", default=None, help="where the local backend writes (default: the temp dir)")
    args = parser.parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
