"""Following a running job's Ray log incrementally, keeping only a bounded tail, shared by all its readers.

Ray's dashboard streams a job's log over a websocket (`GET /api/jobs/{submission_id}/logs/tail`, what
`JobSubmissionClient.tail_job_logs` reads): text messages from the start of the log, closed normally once
the job has ended. A `LogTail` reads that stream once and keeps the last `window_bytes` bytes plus the
total count, so a reader asks `since(offset)` for what came after a byte offset (UTF-8 bytes of the log
text) and `wait_beyond(offset)` for more. `LogTails` holds one tail per submission id, however many
readers follow that job. If the stream breaks before the job ended, the tail reconnects and skips what it
has already counted (Ray restarts the stream from the log's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Log text from byte `start` to `next_offset`, answering a reader who asked from byte `asked`."""

    text: str
    asked: int
    start: int
    next_offset: int

    @property
    def dropped(self) -> int:
        """Bytes between the offset asked for and `start`, no longer kept (the reader fell behind)."""
        return max(0, self.start - self.asked)


FIRST_DATA_SECONDS = 3.0
"""Ray's tail sends its first chunk a second or two after the stream opens (its head waits 1 s for the job's
agent, then the agent reads the file): a stream silent that long holds an empty log."""


class LogTail:
    """One job's log, followed from Ray; memory stays at `window_bytes` whatever the log's size."""

    def __init__(
        self,
        submission_id: str,
        *,
        address: str,
        headers: dict[str, str] | None = None,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        reconnect_seconds: float = 1.0,
        max_failures: int | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    ):
        self.submission_id = submission_id
        self._max_failures = max_failures
        self._url = f"{address.rstrip('/')}/api/jobs/{submission_id}/logs/tail"
        self._headers = dict(headers or {})
        self._window = window_bytes
        self._reconnect = reconnect_seconds
        self._session_factory = session_factory
        self._buffer = bytearray()
        self._start = 0  # total offset of _buffer[0]
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.done = False
        self.error: str | None = None
        self._last_data = 0.0  # monotonic time of the last bytes received; 0: none yet
        self._connected = 0.0  # monotonic time the first stream opened; 0: not yet
        self._settled = False  # the backlog Ray sent first has arrived (see caught_up)

    @property
    def total(self) -> int:
        """Bytes of log seen so far."""
        return self._start + len(self._buffer)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name=f"log-tail-{self.submission_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._finish(self.error)

    def since(self, offset: int) -> LogSlice:
        """The text after byte `offset` that is still kept, cut at whole UTF-8 characters."""
        start, data = self.bytes_since(offset)
        text = data.decode("utf-8", errors="replace")
        return LogSlice(text=text, asked=offset, start=start, next_offset=start + len(data))

    def bytes_since(self, offset: int) -> tuple[int, bytes]:
        """(where they start, the bytes after `offset` still kept), cut at whole UTF-8 characters."""
        begin = max(offset, self._start)
        data = memoryview(self._buffer)[begin - self._start :]
        skip = 0
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:  # the window cut a character
            skip += 1
        end = len(data)
        for back in range(1, min(4, end) + 1):  # keep back a character whose bytes have not all arrived
            lead = data[end - back]
            if lead & 0xC0 != 0x80:
                width = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
                if width > back:
                    end -= back
                break
        return begin + skip, bytes(data[skip:end])

    async def wait_beyond(self, offset: int, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until there is log past `offset` or the job's log has ended."""
        return await self._wait_until(lambda: self.total > offset or self.done, timeout)

    async def wait_done(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until Ray closed the stream (the job ended) or the tail failed."""
        return await self._wait_until(lambda: self.done, timeout)

    async def _wait_until(self, reached: Callable[[], bool], timeout: float) -> bool:
        """True once `reached()` holds (checked at each change of the tail), False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not reached():
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def caught_up(self, *, quiet: float = 0.2, timeout: float = 5.0) -> None:
        """Wait until Ray has sent what the log held when the tail started: nothing new for `quiet` seconds.

        Ray's stream sends the log written so far at once, then what is added (polled about once a second);
        a first reader waits for that backlog so it is not shown a log cut short. Bounded by `timeout`.
        """
        deadline = time.monotonic() + timeout
        while not self.done and not self._settled and time.monotonic() < deadline:
            if self._last_data and time.monotonic() - self._last_data >= quiet:
                self._settled = True  # later readers need not wait: the backlog is in
            elif not self._last_data and self._connected and time.monotonic() - self._connected >= FIRST_DATA_SECONDS:
                self._settled = True  # connected long enough for Ray's first chunk, and the log is empty so far
            if self._settled:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(quiet, max(0.0, deadline - time.monotonic())))
        self._settled = True  # ended, or still streaming after `timeout`: later readers take what there is

    def _append(self, data: bytes) -> None:
        self._last_data = time.monotonic()
        self._buffer += data
        extra = len(self._buffer) - self._window
        if extra > 0:
            del self._buffer[:extra]
            self._start += extra
        self._changed.set()

    def _finish(self, error: str | None) -> None:
        self.done, self.error = True, error
        self._changed.set()

    async def _follow(self) -> None:
        failures = 0
        try:
            while True:
                failures += 1
                if self._max_failures is not None and failures > self._max_failures:
                    self._finish(f"Ray's log stream failed {self._max_failures} times")
                    return
                try:
                    if await self._read_stream():
                        self._finish(None)
                        return
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (400, 401, 403, 404):  # no such job, or not ours: retrying will not help
                        self._finish(f"Ray refused the log stream ({exc.status})")
                        return
                    logger.info("log tail of %s refused (%s); reconnecting", self.submission_id, exc.status)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    logger.info("log tail of %s broke (%s); reconnecting", self.submission_id, exc)
                await asyncio.sleep(self._reconnect)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected answer: readers see the tail as ended
            logger.exception("log tail of %s failed", self.submission_id)
            self._finish(str(exc))

    async def _read_stream(self) -> bool:
        """Read Ray's stream once; True when it ended normally (the job's log is complete)."""
        skip = self.total  # Ray streams from the start again: drop what was counted before
        async with self._session_factory() as session, session.ws_connect(self._url, headers=self._headers) as ws:
            self._connected = self._connected or time.monotonic()
            async for message in _messages(ws):
                data = message.encode("utf-8")
                if skip >= len(data):
                    skip -= len(data)
                    continue
                self._append(data[skip:])
                skip = 0
            return ws.close_code != aiohttp.WSCloseCode.ABNORMAL_CLOSURE and ws.exception() is None


async def _messages(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[str]:
    while True:
        message = await ws.receive()
        if message.type == aiohttp.WSMsgType.TEXT:
            yield message.data
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return
        elif message.type == aiohttp.WSMsgType.ERROR:
            raise aiohttp.ClientError(f"websocket error: {ws.exception()}")


class LogTailsFull(Exception):
    """Every tail slot is taken by a job somebody is reading."""


class LogTails:
    """One `LogTail` per submission id for all its readers; a tail nobody reads for `idle_seconds` is closed.

    A tail Ray refused or that failed (asked, say, before Ray knew the job) is replaced by the next reader's.
    Use it from one event loop; `close()` at shutdown.
    """

    def __init__(
        self,
        *,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        idle_seconds: float = 30.0,
        max_tails: int = 256,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    ):
        self._window = window_bytes
        self._session_factory = session_factory
        self._idle = idle_seconds
        self._max = max_tails
        self._tails: dict[str, LogTail] = {}
        self._readers: dict[int, int] = {}  # id(tail) -> readers now
        self._idle_since: dict[str, float] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tails)

    @contextlib.asynccontextmanager
    async def reading(
        self, submission_id: str, *, address: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[LogTail]:
        """The job's tail (from the dashboard at `address`), started on first use and shared; released on exit."""
        tail = await self._acquire(submission_id, address, headers)
        try:
            yield tail
        finally:
            self._readers[id(tail)] -= 1
            if self._readers[id(tail)] == 0:
                del self._readers[id(tail)]
                if self._tails.get(submission_id) is tail:
                    self._idle_since[submission_id] = time.monotonic()
                    asyncio.get_running_loop().call_later(self._idle, self._expire, submission_id)

    def _expire(self, submission_id: str) -> None:
        since = self._idle_since.get(submission_id)
        if since is not None and time.monotonic() - since >= self._idle:
            self._close_soon(submission_id)

    def _close_soon(self, submission_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._drop(submission_id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _acquire(self, submission_id: str, address: str, headers: dict[str, str] | None) -> LogTail:
        await self.close_idle()
        tail = self._tails.get(submission_id)
        if tail is not None and tail.error is not None:
            await self._drop(submission_id)  # refused or failed: its readers keep the old one, ended
            tail = None
        if tail is None:
            if len(self._tails) >= self._max:
                raise LogTailsFull(f"{self._max} job logs are being followed already")
            tail = self._tails[submission_id] = LogTail(
                submission_id,
                address=address,
                headers=headers,
                window_bytes=self._window,
                session_factory=self._session_factory,
            )
            tail.start()
        self._readers[id(tail)] = self._readers.get(id(tail), 0) + 1
        self._idle_since.pop(submission_id, None)
        return tail

    async def close_idle(self) -> None:
        """Close the tails nobody has read for `idle_seconds`."""
        now = time.monotonic()
        for submission_id, since in list(self._idle_since.items()):
            if now - since >= self._idle:
                await self._drop(submission_id)

    async def _drop(self, submission_id: str) -> None:
        tail = self._tails.pop(submission_id, None)
        if tail is None:
            return
        self._idle_since.pop(submission_id, None)
        await tail.close()

    async def close(self) -> None:
        for submission_id in list(self._tails):
            await self._drop(submission_id)
