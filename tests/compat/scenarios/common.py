"""Helpers shared by the scenario scripts; they run under the official client's own virtualenv.

A scenario reads GATEWAY_URL and GATEWAY_TOKEN (and sometimes more tokens) from its environment, prints
what it does, and exits non-zero when a check fails.
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qiskit_serverless import QiskitServerlessException, ServerlessClient

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"
CLIENT_STATUSES = {"QUEUED", "INITIALIZING", "RUNNING", "DONE", "ERROR", "CANCELED"}
TERMINAL = {"DONE", "ERROR", "CANCELED"}


def connect(token_variable: str = "GATEWAY_TOKEN") -> ServerlessClient:
    """The client exactly as a user builds it for this gateway."""
    return ServerlessClient(host=os.environ["GATEWAY_URL"], token=os.environ[token_variable], channel="local")


def stage(program: str) -> str:
    """Copy a program's directory to a fresh working directory (the client writes artifact.tar into it)."""
    target = Path(tempfile.mkdtemp(prefix=f"{program}-", dir=os.getcwd()))
    shutil.copytree(PROGRAMS / program, target, dirs_exist_ok=True)
    return str(target)


def step(message: str) -> None:
    print(f"--- {message}", flush=True)


def check(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def expect_error(
    call: Callable[[], Any],
    *fragments: str,
    errors: tuple[type[BaseException], ...] = (QiskitServerlessException,),
) -> str:
    """`call` must raise one of `errors` whose text holds every fragment (case-insensitive)."""
    try:
        value = call()
    except errors as exc:
        text = str(exc)
        response = getattr(exc, "response", None)
        if response is not None:
            text += f" [HTTP {response.status_code}] {response.text}"
        for fragment in fragments:
            check(fragment.lower() in text.lower(), f"error {text!r} should mention {fragment!r}")
        print(f"    raised as expected: {' '.join(text.split())[:300]}", flush=True)
        return text
    raise AssertionError(f"expected an error mentioning {fragments}, got {value!r}")


def check_status(status: str) -> None:
    """The client maps the gateway's statuses: a raw PENDING/SUCCEEDED/... must never show through."""
    check(
        status in CLIENT_STATUSES or status.startswith("RUNNING: "),
        f"status {status!r} is not one the client knows (a gateway status leaked through unmapped?)",
    )


def wait_for_status(job: Any, wanted: set[str], *, timeout: float, interval: float = 0.3) -> list[str]:
    """Poll job.status() until it is in `wanted`; return the distinct statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        status = job.status()
        check_status(status)
        if not seen or seen[-1] != status:
            seen.append(status)
            print(f"    {job.job_id}: {status}", flush=True)
        if status in wanted:
            return seen
        if status in TERMINAL:
            raise AssertionError(f"job {job.job_id} ended {status} while waiting for {sorted(wanted)}: {seen}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.job_id} not in {sorted(wanted)} after {timeout} s: {seen}")
        time.sleep(interval)


def wait_terminal(job: Any, *, timeout: float = 180) -> list[str]:
    return wait_for_status(job, TERMINAL, timeout=timeout)


def write_output(**data: Any) -> None:
    """Hand values (job ids...) back to the pytest side through SCENARIO_OUTPUT."""
    path = os.environ.get("SCENARIO_OUTPUT")
    if path:
        Path(path).write_text(json.dumps(data))
