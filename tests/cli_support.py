"""Run the `serverless-gateway` command in a subprocess, as an operator would, and clean up what it leaves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import psutil

_SCRIPT = Path(sys.executable).with_name("serverless-gateway")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "serverless_gateway.cli"]


def cli_env(**settings: str) -> dict[str, str]:
    """The environment less any GATEWAY_* or RAY_* variable, plus `settings` (GATEWAY_ added to each name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "RAY_"))}
    env.update({f"GATEWAY_{name.upper()}": value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


class Outcome(Protocol):
    returncode: int
    stdout: str
    stderr: str


def one_line_error(done: Outcome) -> str:
    """The failure's message: a non-zero exit, nothing on stdout, exactly one line on stderr."""
    assert done.returncode != 0, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """PostgreSQL servers running on `pgdata` (their command line names it)."""
    mark = str(pgdata.resolve())
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with suppress(psutil.Error):
            if proc.info["name"] == "postgres" and mark in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


def kill_postgres(pgdata: Path) -> None:
    procs = postgres_processes(pgdata)
    for proc in procs:
        with suppress(psutil.Error):
            proc.terminate()
    psutil.wait_procs(procs, timeout=10)


@dataclass
class Served:
    """A running `serverless-gateway serve`."""

    process: subprocess.Popen[str]
    url: str
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_live(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output()}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/liveness/", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"serve did not answer within {timeout} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def serving(env: dict[str, str], workdir: Path, *args: str) -> Iterator[Served]:
    """`serverless-gateway serve` on a free port; killed at the end if the test did not stop it."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            yield Served(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
