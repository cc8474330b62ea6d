"""Speed and memory of tenant isolation (issue 9, item 6), each figure beside a baseline from the same run.

(1) one head: start time and idle RSS of a sandboxed head, beside an unsandboxed `ray start --head` (the old
    shared head) started the same way;
(2) first job of a new tenant (run -> SUCCEEDED), without a spare head and with one, beside a warm tenant's;
(3) warm-tenant turnaround of a trivial job, gateway beside the same program sent straight to that tenant's
    head (with its token), interleaved, both polled every 20 ms with httpx;
(4) ten tenants with a job each, all at once: makespan and whether all finished.

The gateway runs as its own process (uvicorn) with no GATEWAY_RAY_ADDRESS, so it starts sandboxed heads.
Usage: `.venv/bin/python -m bench.cluster_bench [--repeat 10] [--tenants 10] [--only 1,2,3,4]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psutil

from bench.engine_bench import POLL, TERMINAL, TRIVIAL, Database, Direct, Gateway, gateway_status, run, upload
from serverless_gateway.engine.clusters.sandbox import SandboxedHead, default_hidden, new_spec
from serverless_gateway.engine.local_ray import LocalRayHead


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def session_rss(session_id: int) -> int:
    total = 0
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError):
            continue
    return total


async def bench_head(work: Path) -> None:
    spec = new_spec(num_cpus=1, hidden=default_hidden(work))
    sandboxed = SandboxedHead(spec)
    started = time.monotonic()
    await sandboxed.start()
    sandboxed_start = time.monotonic() - started
    await asyncio.sleep(10)
    assert spec.pid is not None
    sandboxed_rss = tree_rss(spec.pid)
    await sandboxed.stop()
    plain = LocalRayHead(work / "plain-ray", num_cpus=1)
    started = time.monotonic()
    await plain.start()
    plain_start = time.monotonic() - started
    await asyncio.sleep(10)
    assert plain._session_id is not None
    plain_rss = session_rss(plain._session_id)
    await plain.stop()
    mib = 1024 * 1024
    print(f"(1) head start: sandboxed {sandboxed_start:.1f} s, unsandboxed {plain_start:.1f} s")
    print(
        f"    idle head RSS (10 s after start): sandboxed {sandboxed_rss / mib:.0f} MiB, "
        f"unsandboxed {plain_rss / mib:.0f} MiB"
    )


async def user_with_program(db: Database, http: httpx.AsyncClient, name: str) -> str:
    token = await db.user(name)
    await upload(http, token, "trivial", TRIVIAL)
    return token


async def turnaround(http: httpx.AsyncClient, token: str) -> float:
    started = time.monotonic()
    job_id = await run(http, token, "trivial")
    while await gateway_status(http, token, job_id) not in TERMINAL:
        await asyncio.sleep(POLL)
    return time.monotonic() - started


async def tenant_head(db: Database, tenant_user: str) -> tuple[str, str]:
    conn = await asyncpg.connect(db.url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        row = await conn.fetchrow(
            "SELECT c.address, c.token FROM ray_cluster c JOIN \"user\" u ON c.tenant = 'user:' || u.id::text "
            "WHERE u.username = $1",
            tenant_user,
        )
    finally:
        await conn.close()
    assert row is not None, "the tenant has no head"
    return str(row["address"]), str(row["token"])


class TokenDirect(Direct):
    """The direct baseline against a token-protected head."""

    def __init__(self, address: str, token: str, work: Path):
        super().__init__(address, work, headers={"Authorization": f"Bearer {token}"})


async def direct_turnaround(direct: Direct) -> float:
    sid, _ = await direct.call(direct.submit)
    started = time.monotonic()
    while await direct.status(sid) not in TERMINAL:
        await asyncio.sleep(POLL)
    elapsed = time.monotonic() - started
    await direct.forget(sid)
    return elapsed


async def bench_gateway(work: Path, repeat: int, tenants: int, only: set[str]) -> None:
    db = Database()
    await db.create()
    gateway = Gateway(db, "", work, cluster_spares=0, cluster_num_cpus=1, max_clusters=tenants + 3)
    try:
        await gateway.ready()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
            if "2" in only or "3" in only:
                token = await user_with_program(db, http, "warm")
                cold = await turnaround(http, token)  # starts the tenant's head
                warm = statistics.median([await turnaround(http, token) for _ in range(3)])
                print(
                    f"(2) first job of a new tenant, no spare head: {cold:.2f} s (warm tenant: {warm:.2f} s, "
                    f"difference {cold - warm:.2f} s = about one head start)"
                )
            if "3" in only:
                address, head_token = await tenant_head(db, "warm")
                direct = TokenDirect(address, head_token, work)
                through, straight = [], []
                for _ in range(repeat):
                    through.append(await turnaround(http, token))
                    straight.append(await direct_turnaround(direct))
                g, d = statistics.median(through), statistics.median(straight)
                print(
                    f"(3) warm tenant turnaround, median of {repeat}: gateway {g:.3f} s, direct {d:.3f} s, "
                    f"ratio {g / d:.2f}, overhead {1000 * (g - d):.0f} ms"
                )
        gateway.stop()
        if "2" in only:
            spare_gateway = Gateway(db, "", work, cluster_spares=1, cluster_num_cpus=1, max_clusters=tenants + 3)
            await spare_gateway.ready()
            async with httpx.AsyncClient(base_url=spare_gateway.url, timeout=120) as http:
                token = await user_with_program(db, http, f"newcomer-{uuid.uuid4().hex[:6]}")
                await asyncio.sleep(25)  # the spare head starts in the background
                with_spare = await turnaround(http, token)
                print(f"(2) first job of a new tenant, with a spare head: {with_spare:.2f} s")
            spare_gateway.stop()
        if "4" in only:
            many = Gateway(db, "", work, cluster_spares=0, cluster_num_cpus=1, max_clusters=tenants + 1)
            await many.ready()
            async with httpx.AsyncClient(base_url=many.url, timeout=600) as http:
                tokens = [await user_with_program(db, http, f"t{i}-{uuid.uuid4().hex[:4]}") for i in range(tenants)]
                started = time.monotonic()
                results = await asyncio.gather(*(turnaround(http, t) for t in tokens), return_exceptions=True)
                makespan = time.monotonic() - started
                ok = sum(1 for r in results if isinstance(r, float))
                print(
                    f"(4) {tenants} new tenants with a job each at once: {ok}/{tenants} finished, "
                    f"makespan {makespan:.1f} s"
                )
            many.stop()
    finally:
        gateway.stop()
        await db.drop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--only", default="1,2,3,4")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"load average at start: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="gw-cluster-bench-"))
    try:
        if "1" in only:
            await bench_head(work)
        if only & {"2", "3", "4"}:
            await bench_gateway(work, args.repeat, args.tenants, only)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
