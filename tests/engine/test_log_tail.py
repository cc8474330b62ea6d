"""LogTail against a small websocket server speaking Ray's log-tail protocol (no Ray needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from serverless_gateway.engine.log_tail import LogTail, LogTails, LogTailsFull


@dataclass
class FakeRay:
    """`/api/jobs/{id}/logs/tail`: sends what the test queues, from the start on each connection, like Ray."""

    sent: list[str] = field(default_factory=list)
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    connections: int = 0
    headers_seen: list[str | None] = field(default_factory=list)
    break_after: int | None = None  # drop the first connection after this many messages
    ended: bool = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers_seen.append(request.headers.get("Authorization"))
        if request.match_info["job"] == "missing":
            return web.Response(status=404, text="Job missing does not exist")
        self.connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for count, text in enumerate(list(self.sent)):  # a new connection replays the log from its start
            if self.break_after is not None and self.connections == 1 and count == self.break_after:
                assert request.transport is not None
                request.transport.abort()
                return ws
            await ws.send_str(text)
        while not self.ended:
            text = await self.queue.get()
            if text is None:
                self.ended = True
                break
            self.sent.append(text)
            if self.break_after is not None and self.connections == 1 and len(self.sent) > self.break_after:
                assert request.transport is not None
                request.transport.abort()
                return ws
            await ws.send_str(text)
        await ws.close()
        return ws


@pytest.fixture
async def ray() -> AsyncIterator[tuple[FakeRay, str]]:
    fake = FakeRay()
    app = web.Application()
    app.router.add_get("/api/jobs/{job}/logs/tail", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        fake.queue.put_nowait(None)
        await runner.cleanup()


async def wait_total(tail: LogTail, total: int) -> None:
    for _ in range(200):
        if tail.total >= total:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"tail at {tail.total}, wanted {total}")


async def test_a_reader_follows_the_log_by_offset(ray: tuple[FakeRay, str]) -> None:
    fake, address = ray
    tail = LogTail("gw-1", address=address, headers={"Authorization": "Bearer t0k"}, reconnect_seconds=0.05)
    tail.start()
    try:
        await fake.queue.put("hello ")
        assert await tail.wait_beyond(0, timeout=5)
        first = tail.since(0)
        assert (first.text, first.next_offset) == ("hello ", 6)
        waiter = asyncio.create_task(tail.wait_beyond(first.next_offset, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await fake.queue.put("wörld\n")
        assert await waiter
        await wait_total(tail, 13)
        assert tail.since(first.next_offset).text == "wörld\n"
        assert tail.since(tail.total).text == ""
        assert not await tail.wait_beyond(tail.total, timeout=0.05)
        await fake.queue.put(None)
        assert await tail.wait_beyond(tail.total, timeout=5)
        assert tail.done
        assert tail.error is None
    finally:
        await tail.close()
    assert fake.headers_seen == ["Bearer t0k"]


async def test_memory_stays_within_the_window(ray: tuple[FakeRay, str]) -> None:
    fake, address = ray
    tail = LogTail("gw-big", address=address, window_bytes=64 * 1024)
    tail.start()
    try:
        line = "é" * 1000 + "\n"  # 2001 bytes: the window cuts inside characters
        for _ in range(200):
            await fake.queue.put(line)
        await wait_total(tail, 200 * 2001)
        assert len(tail._buffer) == 64 * 1024
        window = tail.since(0)
        assert window.dropped > 0
        assert window.start >= 200 * 2001 - 64 * 1024
        assert window.next_offset == 200 * 2001
        assert set(window.text) <= {"é", "\n"}  # no half character at either end
        assert len(window.text.encode()) == window.next_offset - window.start
    finally:
        await tail.close()


async def test_a_broken_stream_resumes_without_repeating(ray: tuple[FakeRay, str]) -> None:
    fake, address = ray
    fake.break_after = 3
    tail = LogTail("gw-2", address=address, reconnect_seconds=0.05)
    tail.start()
    try:
        for index in range(6):
            await fake.queue.put(f"line {index}\n")
        await fake.queue.put(None)
        assert await tail.wait_beyond(10**9, timeout=10)
        assert tail.since(0).text == "".join(f"line {index}\n" for index in range(6))
        assert fake.connections == 2
    finally:
        await tail.close()


async def test_an_unknown_job_ends_the_tail(ray: tuple[FakeRay, str]) -> None:
    _, address = ray
    tail = LogTail("missing", address=address, reconnect_seconds=0.05)
    tail.start()
    try:
        assert await tail.wait_beyond(0, timeout=5)
        assert tail.error == "Ray refused the log stream (404)"
    finally:
        await tail.close()


async def test_many_readers_share_one_stream(ray: tuple[FakeRay, str]) -> None:
    fake, address = ray
    tails = LogTails(idle_seconds=0.0)

    async def reader(index: int) -> str:
        async with tails.reading("gw-shared", address=address) as tail:
            offset, seen = 0, ""
            while not (tail.done and offset >= tail.total):
                await tail.wait_beyond(offset, timeout=5)
                piece = tail.since(offset)
                seen, offset = seen + piece.text, piece.next_offset
            return seen

    readers = [asyncio.create_task(reader(index)) for index in range(50)]
    await asyncio.sleep(0.1)
    for index in range(20):
        await fake.queue.put(f"{index},")
    await fake.queue.put(None)
    results = await asyncio.gather(*readers)
    assert set(results) == {"".join(f"{index}," for index in range(20))}
    assert fake.connections == 1
    assert len(tails) == 1
    await tails.close_idle()
    assert len(tails) == 0
    await tails.close()


async def test_the_registry_is_bounded(ray: tuple[FakeRay, str]) -> None:
    _, address = ray
    tails = LogTails(max_tails=2, idle_seconds=60)
    try:
        async with tails.reading("a", address=address), tails.reading("b", address=address):
            with pytest.raises(LogTailsFull):
                async with tails.reading("c", address=address):
                    pass
    finally:
        await tails.close()


async def test_a_tail_nobody_reads_is_closed(ray: tuple[FakeRay, str]) -> None:
    fake, address = ray
    tails = LogTails(idle_seconds=0.05)
    try:
        async with tails.reading("gw-idle", address=address) as tail:
            await fake.queue.put("x")
            assert await tail.wait_beyond(0, timeout=5)
        async with tails.reading("gw-idle", address=address) as again:
            assert again is tail  # back within the idle time: the same tail
        for _ in range(100):
            if tail.done:
                break
            await asyncio.sleep(0.01)
        assert tail.done  # closed by the registry, though the job's log has not ended
        assert len(tails) == 0
    finally:
        await tails.close()


async def test_a_refused_tail_is_tried_anew_by_the_next_reader(ray: tuple[FakeRay, str]) -> None:
    _, address = ray
    tails = LogTails(idle_seconds=60)
    try:
        async with tails.reading("missing", address=address) as refused:
            assert await refused.wait_beyond(0, timeout=5)
            assert refused.error is not None  # asked before Ray knew the job
        async with tails.reading("missing", address=address) as again:
            assert again is not refused
    finally:
        await tails.close()
