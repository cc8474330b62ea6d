"""A private local Ray head: started with `ray start --head` on free ports, stopped without touching other heads.

`ray stop` would stop every Ray head of the machine, so a head is started in its own session and stopped by
ending exactly that session's processes (plus any job driver that escaped it into a session of its own).
A head outlives a gateway killed with SIGKILL; the next `start()` with the same temp_root finds it through a
small state file and reuses it, so the jobs it runs are recovered instead of lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from .clusters.sandbox import AF_UNIX_MAX, SOCKET_SUFFIX_CHARS, head_root, root_cause

logger = logging.getLogger(__name__)

# Ray puts unix sockets under <temp-dir>/session_<date>_<pid>/sockets/; AF_UNIX paths are capped at 107 bytes.
_MAX_TEMP_DIR_CHARS = AF_UNIX_MAX - SOCKET_SUFFIX_CHARS
# Under temp_root: how to find (and reuse, or clean up) a head whose gateway was killed before stopping it.
STATE_FILE = "local-ray-head.json"
# What `ray start` printed when it failed, kept in the head's temp dir beside Ray's logs.
START_OUTPUT = "ray-start.log"
# A stopped head's temp dir is renamed to this prefix + its name before it is removed (see _discard).
TRASH_PREFIX = ".trash-"


class RayStartError(RuntimeError):
    """`ray start --head` failed or the dashboard never answered; `deterministic`: trying again cannot help."""

    def __init__(self, message: str, *, deterministic: bool = False):
        super().__init__(message)
        self.deterministic = deterministic


def free_port() -> int:
    """A TCP port nobody listens on right now (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ray_executable() -> str:
    """The `ray` script of the running interpreter's environment (falls back to PATH)."""
    sibling = Path(sys.executable).parent / "ray"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("ray")
    if found is None:
        raise RayStartError("the `ray` command was not found next to the Python interpreter nor on PATH")
    return found


class LocalRayHead:
    """One Ray head on this machine, owned by this object: its ports, temp dir and processes."""

    def __init__(
        self,
        temp_root: Path,
        *,
        num_cpus: int | None = None,
        startup_timeout: float = 120.0,
        attempts: int = 3,
        dashboard_port: int | None = None,
        removal_budget: float = 5.0,
    ):
        self.temp_root = temp_root
        self.num_cpus = num_cpus
        self.startup_timeout = startup_timeout
        self.attempts = attempts
        self.wanted_dashboard_port = dashboard_port
        self.removal_budget = removal_budget
        self.temp_dir: Path | None = None
        self.gcs_port: int | None = None
        self.dashboard_port: int | None = None
        self.dashboard_url: str | None = None
        self._session_id: int | None = None
        # Set when another live process owns the recorded head here: this head then keeps no record.
        self._independent = False

    @property
    def gcs_address(self) -> str:
        if self.gcs_port is None:
            raise RuntimeError("the Ray head is not started")
        return f"127.0.0.1:{self.gcs_port}"

    def _make_temp_dir(self) -> Path:
        self.temp_root.mkdir(parents=True, exist_ok=True)
        wanted = self.temp_root.resolve() / f"ray-{uuid.uuid4().hex[:8]}"
        if len(str(wanted)) <= _MAX_TEMP_DIR_CHARS:
            wanted.mkdir()
            return wanted
        short = Path(tempfile.mkdtemp(prefix="gwray-", dir=head_root()))
        logger.info("Ray temp dir %s would be too long for Ray's sockets; using %s", wanted, short)
        return short

    def _command(self, temp_dir: Path) -> list[str]:
        if self.gcs_port is None or self.dashboard_port is None:
            raise RuntimeError("ports are chosen in start()")
        command = [
            ray_executable(),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            # 0/0 lets every worker bind a random port instead of two heads sharing 10002-19999.
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        if self.num_cpus is not None:
            command.append(f"--num-cpus={self.num_cpus}")
        return command

    async def start(self) -> str:
        """Start the head and wait for its dashboard; returns the dashboard URL (the job submission address).

        `ray start` gives up when the raylet takes over 30 s to register (a loaded machine): that is retried. A
        failure whose cause is known to be deterministic is not; its message quotes the root-cause line of Ray's
        logs, which are kept (cancelling a start stops what it started).
        """
        if self.dashboard_url is not None:
            return self.dashboard_url
        self._remove_in_background(await asyncio.to_thread(self._leftover_trash))
        adopted = await self._adopt_previous()
        if adopted is not None:
            return adopted
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._start_once()
            except RayStartError as exc:
                if exc.deterministic or attempt == self.attempts:
                    await self.stop(keep_logs=True)
                    raise
                await self.stop()
                logger.warning("starting the local Ray head failed (attempt %d): %s", attempt, str(exc)[-300:])
            except BaseException:
                await asyncio.shield(self.stop())
                raise
        raise RayStartError("unreachable")

    async def _start_once(self) -> str:
        self.temp_dir = await asyncio.to_thread(self._make_temp_dir)
        self.gcs_port = free_port()
        self.dashboard_port = self.wanted_dashboard_port or free_port()
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        process = await asyncio.create_subprocess_exec(
            *self._command(self.temp_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        # `ray start` is the leader of a new session that every head process (gcs, raylet, dashboard) inherits.
        self._session_id = process.pid
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=self.startup_timeout)
        except TimeoutError:
            raise self._failure(f"`ray start --head` did not finish within {self.startup_timeout:.0f} s", "") from None
        if process.returncode != 0:
            raise self._failure(f"`ray start --head` exited with {process.returncode}", output.decode(errors="replace"))
        url = f"http://127.0.0.1:{self.dashboard_port}"
        try:
            await self._wait_for_dashboard(url)
        except RayStartError as exc:
            if exc.deterministic:
                raise self._failure("the Ray dashboard cannot start", "") from None
            raise self._failure(str(exc), "") from None
        self.dashboard_url = url
        if not self._independent:
            await asyncio.to_thread(self._write_state)
        logger.info("local Ray head up: dashboard %s, GCS %s, temp dir %s", url, self.gcs_address, self.temp_dir)
        return url

    def _failure(self, what: str, output: str) -> RayStartError:
        """The start failed: name the root cause from Ray's output and logs, the fix, and where the logs are kept."""
        if self.temp_dir is not None and output:  # kept beside Ray's own logs
            with contextlib.suppress(OSError):
                (self.temp_dir / START_OUTPUT).write_text(output[-200_000:])
        line, fix, deterministic = root_cause(self.temp_dir, output[-20000:]) if self.temp_dir else (output, "", False)
        hint = f"; fix: {fix}" if fix else ""
        kept = f" (Ray's logs are kept in {self.temp_dir})" if self.temp_dir else ""
        return RayStartError(f"{what}: {line}{hint}{kept}", deterministic=deterministic)

    async def _discard(self, temp_dir: Path) -> None:
        """Rename the temp dir out of the way at once, then remove it for at most `removal_budget` seconds.

        A temp dir holds Ray's pip environments (a GB of small files): removing it can take a minute, and a
        gateway asked to stop should not wait that long. What is left when the budget runs out (or the process
        exits) is a `.trash-*` dir beside it, removed in the background by the next start().
        """
        trash = temp_dir.with_name(f"{TRASH_PREFIX}{temp_dir.name}")
        try:
            await asyncio.to_thread(os.replace, temp_dir, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = temp_dir
        finished = self._remove_in_background([trash])
        if not await asyncio.to_thread(finished.wait, self.removal_budget):
            logger.info("still removing %s; the next start finishes it if this process exits first", trash)

    def _leftover_trash(self) -> list[Path]:
        if not self.temp_root.is_dir():
            return []
        return [path for path in self.temp_root.iterdir() if path.name.startswith(TRASH_PREFIX)]

    @staticmethod
    def _remove_in_background(paths: list[Path]) -> threading.Event:
        """Remove the paths in a daemon thread (it never holds up the interpreter's exit); set when done."""
        finished = threading.Event()

        def remove() -> None:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
            finished.set()

        if paths:
            threading.Thread(target=remove, name="ray-temp-dir-removal", daemon=True).start()
        else:
            finished.set()
        return finished

    @property
    def state_file(self) -> Path:
        return self.temp_root / STATE_FILE

    def _write_state(self) -> None:
        record = {
            "session_id": self._session_id,
            "temp_dir": str(self.temp_dir),
            "gcs_port": self.gcs_port,
            "dashboard_port": self.dashboard_port,
            "owner_pid": os.getpid(),
            "owner_started": psutil.Process().create_time(),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.state_file)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return record

    def _session_alive(self) -> bool:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if os.getsid(proc.pid) == self._session_id and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False

    @staticmethod
    def _owner_alive(record: dict[str, Any]) -> bool:
        """Whether another live process (not this one) started the recorded head: then it is not ours to take."""
        try:
            pid, started = int(record["owner_pid"]), float(record["owner_started"])
        except (KeyError, TypeError, ValueError):
            return False
        if pid == os.getpid():
            return False
        try:
            return bool(abs(psutil.Process(pid).create_time() - started) < 1.0)
        except psutil.Error:
            return False

    async def _adopt_previous(self) -> str | None:
        """Reuse the head a previous gateway left running here (it was killed), so its jobs live on."""
        record = await asyncio.to_thread(self._read_state)
        if record is None:
            return None
        if await asyncio.to_thread(self._owner_alive, record):
            logger.warning(
                "process %s, which started the local Ray head under %s, still runs: starting a separate head "
                "(two gateways should not share GATEWAY_DATA_DIR)",
                record.get("owner_pid"),
                self.temp_root,
            )
            self._independent = True
            return None
        try:
            self._session_id = int(record["session_id"])
            self.temp_dir = Path(record["temp_dir"])
            self.gcs_port = int(record["gcs_port"])
            self.dashboard_port = int(record["dashboard_port"])
        except (KeyError, TypeError, ValueError):
            await asyncio.to_thread(self.state_file.unlink, True)
            return None
        url = f"http://127.0.0.1:{self.dashboard_port}"
        if await asyncio.to_thread(self._session_alive) and await self._answers(url):
            self.dashboard_url = url
            await asyncio.to_thread(self._write_state)  # this process owns it now
            logger.info("reusing the local Ray head left running by a previous gateway: dashboard %s", url)
            return url
        logger.info("cleaning up a local Ray head left behind by a previous gateway (temp dir %s)", self.temp_dir)
        await self.stop()
        return None

    @staticmethod
    async def _answers(url: str) -> bool:
        async with httpx.AsyncClient(timeout=3.0) as http:
            for _ in range(3):
                try:
                    if (await http.get(f"{url}/api/version")).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        return False

    async def _wait_for_dashboard(self, url: str) -> None:
        """Until the dashboard answers; a cause known to be deterministic in Ray's logs fails it at once."""
        deadline = time.monotonic() + self.startup_timeout
        next_scan = time.monotonic() + 2.0
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                try:
                    response = await http.get(f"{url}/api/jobs/")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RayStartError(f"the Ray dashboard at {url} did not answer within {self.startup_timeout} s")
                if self.temp_dir is not None and time.monotonic() > next_scan:
                    next_scan = time.monotonic() + 2.0
                    line, _, deterministic = await asyncio.to_thread(root_cause, self.temp_dir, "")
                    if deterministic:
                        raise RayStartError(f"the Ray dashboard at {url} cannot start: {line}", deterministic=True)
                await asyncio.sleep(0.25)

    def _owned_processes(self) -> list[psutil.Process]:
        """This head's processes: its session, and stray drivers pointing at its GCS or temp dir."""
        me = os.getpid()
        found: list[psutil.Process] = []
        markers = [m for m in (str(self.temp_dir) if self.temp_dir else None, self._gcs_marker()) if m]
        for proc in psutil.process_iter():
            if proc.pid == me:
                continue
            try:
                if self._session_id is not None and os.getsid(proc.pid) == self._session_id:
                    found.append(proc)
                    continue
                if markers and self._mentions(proc, markers):
                    found.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return found

    def _gcs_marker(self) -> str | None:
        return self.gcs_address if self.gcs_port is not None else None

    @staticmethod
    def _mentions(proc: psutil.Process, markers: list[str]) -> bool:
        cmdline = " ".join(proc.cmdline())
        if any(marker in cmdline for marker in markers):
            return True
        with contextlib.suppress(psutil.Error):
            environ = proc.environ()
            address = environ.get("RAY_ADDRESS", "")
            return any(marker in address for marker in markers)
        return False

    def _kill_owned(self, grace_seconds: float) -> int:
        procs = [p for p in self._owned_processes() if p.status() != psutil.STATUS_ZOMBIE]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_seconds)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace_seconds)
        return len(procs)

    async def stop(self, *, keep_logs: bool = False) -> None:
        """Stop only this head's processes and remove its temp dir (unless `keep_logs`); safe to call twice."""
        if self._session_id is not None or self.temp_dir is not None:
            await asyncio.to_thread(self._kill_owned, 5.0)
            # Job drivers live in sessions of their own and die a moment after their supervisor: sweep again.
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self._kill_owned, 3.0)
        if self.temp_dir is not None and not keep_logs:
            await self._discard(self.temp_dir)
        if not self._independent:
            await asyncio.to_thread(self.state_file.unlink, True)
        self._session_id = None
        self.temp_dir = None
        self.dashboard_url = None
        self.gcs_port = None
        self.dashboard_port = None
