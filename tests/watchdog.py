"""A per-test watchdog: a test that hangs fails on its own, with every thread's and task's stack printed.

The suite runs in one event loop (session scope), so a hung await would otherwise hold the whole run until
CI's timeout kills it, saying nothing of where it hung. pytest-timeout is not used: its signal method raises
inside the shared loop's `select` (breaking every later test) and its thread method ends the whole run.
After GATEWAY_TEST_WATCHDOG_SECONDS (default 900) the stacks go to stderr and the test's task is cancelled;
a loop that cannot even run that cancellation (blocked by synchronous code) ends the process after 60 s more.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
from collections.abc import AsyncIterator

import pytest

WATCHDOG_SECONDS = float(os.environ.get("GATEWAY_TEST_WATCHDOG_SECONDS", "900"))
BLOCKED_LOOP_GRACE_SECONDS = 60.0


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        sys.stderr.write(f"-- task {task.get_name()}\n")
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


@pytest.fixture(autouse=True)
async def _watchdog(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    test_name = getattr(request.node, "originalname", request.node.name)
    finished = threading.Event()
    cancelled = threading.Event()

    def cancel_test() -> None:
        _dump_tasks(loop)
        for task in asyncio.all_tasks(loop):
            code = getattr(task.get_coro(), "cr_code", None)
            if code is not None and code.co_name == test_name:
                task.cancel(f"watchdog: still running after {WATCHDOG_SECONDS:.0f} s")
        cancelled.set()

    def expire() -> None:
        if finished.is_set():
            return
        sys.stderr.write(f"\n== watchdog: {request.node.nodeid} still running after {WATCHDOG_SECONDS:.0f} s\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        loop.call_soon_threadsafe(cancel_test)
        if not cancelled.wait(BLOCKED_LOOP_GRACE_SECONDS) and not finished.is_set():
            sys.stderr.write("== watchdog: the event loop is blocked; ending the run\n")
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            os._exit(3)

    timer = threading.Timer(WATCHDOG_SECONDS, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        finished.set()
        timer.cancel()
