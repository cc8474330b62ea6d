"""One Ray head in a bubblewrap sandbox: its own PID namespace, a private /tmp, only its own directory writable,
none of the gateway's files visible, a minimal environment and a fresh Ray auth token.

The head runs as `bwrap ... ray start --head --block` in a session of its own, so it outlives a gateway killed
with SIGKILL; killing the sandbox's first process ends every process of the head. Its directory is short and
lives under the system temp dir, whatever the gateway's data dir, so Ray's unix socket paths stay under the
107-byte AF_UNIX limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

# Ray's deepest socket: <temp dir>/session_2026-12-01_20-25-00_123456_1234567/sockets/dash_MetricsHead (+ slack).
SOCKET_SUFFIX_CHARS = 74
AF_UNIX_MAX = 107
HEAD_PREFIX = "gwh-"
START_LOG = "ray-start.log"


class HeadStartError(RuntimeError):
    """A head could not start; `deterministic` says whether trying again can help."""

    def __init__(self, message: str, *, deterministic: bool, logs: Path | None = None):
        super().__init__(message)
        self.deterministic = deterministic
        self.logs = logs


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Every head gets a block of ports of its own below the kernel's ephemeral range (32768+ on Linux), where no
# outgoing connection or randomly bound worker can take them: its named ports, then its workers' range.
PORT_BLOCKS_START = 20000
PORT_BLOCK_SIZE = 128
PORT_BLOCKS = 90  # 20000-31519
NAMED_PORTS = (
    "gcs",
    "dashboard",
    "client",
    "node_manager",
    "object_manager",
    "agent_http",
    "agent_grpc",
    "runtime_env",
    "metrics",
)
_taken_blocks: set[int] = set()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def claim_port_block(in_use: set[int] | None = None) -> int:
    """The first port of a block no head of this process uses and whose named ports are free right now."""
    busy = _taken_blocks | (in_use or set())
    order = list(range(PORT_BLOCKS))
    secrets.SystemRandom().shuffle(order)  # two gateways on one machine rarely try the same block first
    for block in order:
        base = PORT_BLOCKS_START + block * PORT_BLOCK_SIZE
        if base in busy:
            continue
        if all(_port_free(base + offset) for offset in range(len(NAMED_PORTS))):
            _taken_blocks.add(base)
            return base
    raise HeadStartError("no free block of ports for another Ray head (20000-31519)", deterministic=False)


def release_port_block(base: int | None) -> None:
    if base is not None:
        _taken_blocks.discard(base)


def sandbox_problem() -> str | None:
    """None when bubblewrap can make the namespaces a head needs here, else why not (checked by running it)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed: `apt-get install bubblewrap` (Debian/Ubuntu)"
    try:
        done = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not run: {exc}"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bubblewrap cannot create namespaces here ({why[-1] if why else done.returncode})"
    return None


def head_root() -> Path:
    """The short directory heads live under: the system temp dir if short enough, else /tmp."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) + 1 + len(HEAD_PREFIX) + 8 + 3 + SOCKET_SUFFIX_CHARS > AF_UNIX_MAX:
        base = Path("/tmp")
    return base


def new_head_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix=HEAD_PREFIX, dir=head_root()))
    os.chmod(path, 0o700)
    return path


@dataclass
class HeadSpec:
    """What a sandboxed head is made of; `record()` / `from_record()` keep it in the cluster registry."""

    head_dir: Path
    token: str
    ports: dict[str, int]
    num_cpus: int | None = None
    pid: int | None = None
    started: float | None = None
    hidden: list[str] = field(default_factory=list)

    @property
    def temp_dir(self) -> Path:
        return self.head_dir / "r"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def record(self) -> dict[str, Any]:
        return {
            "head_dir": str(self.head_dir),
            "ports": self.ports,
            "num_cpus": self.num_cpus,
            "pid": self.pid,
            "started": self.started,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], token: str) -> HeadSpec:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            _taken_blocks.add(int(record["ports"]["gcs"]))
        return cls(
            head_dir=Path(record["head_dir"]),
            token=token,
            ports={str(k): int(v) for k, v in record["ports"].items()},
            num_cpus=record.get("num_cpus"),
            pid=record.get("pid"),
            started=record.get("started"),
        )


def new_spec(*, num_cpus: int | None = None, hidden: list[str] | None = None) -> HeadSpec:
    base = claim_port_block()
    ports = {name: base + offset for offset, name in enumerate(NAMED_PORTS)}
    ports["workers_min"] = base + len(NAMED_PORTS)
    ports["workers_max"] = base + PORT_BLOCK_SIZE - 1
    return HeadSpec(
        head_dir=new_head_dir(),
        token=secrets.token_hex(32),
        ports=ports,
        num_cpus=num_cpus,
        hidden=list(hidden or []),
    )


def _python_locations() -> list[Path]:
    """Where the interpreter and its environment really live (a venv's python links into e.g. /root/.pyenv)."""
    places = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    return sorted({p.resolve() for p in places})


def default_hidden(data_dir: Path, extra: Iterable[Path] = ()) -> list[str]:
    """The gateway's data dir and working dir, home directories, runtime sockets (databases...), other heads'
    directory when it is not the private /tmp, and `extra` (the file storage, a database's socket dir...)."""
    candidates = [data_dir.resolve(), Path.cwd().resolve(), Path("/root"), Path("/home"), Path("/run")]
    candidates += [Path("/var/run"), Path("/var/lib/postgresql"), Path("/srv"), Path("/mnt"), Path("/media")]
    candidates += [head_root().resolve(), *(path.resolve() for path in extra)]
    found: list[str] = []
    for path in candidates:
        if path.is_dir() and not path.is_symlink() and str(path) != "/" and str(path) not in found:
            found.append(str(path))
    return found


def sandbox_command(spec: HeadSpec) -> list[str]:
    """`bwrap <mounts> -- ray start --head --block <explicit ports>`."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise HeadStartError("bubblewrap (`bwrap`) is not installed", deterministic=True)
    mounts = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for hidden in spec.hidden:
        if hidden.startswith("/tmp"):
            continue  # /tmp is private already
        mounts += ["--tmpfs", hidden]
    for location in _python_locations():
        mounts += ["--ro-bind", str(location), str(location)]
    mounts += ["--bind", str(spec.head_dir), str(spec.head_dir)]
    ports = spec.ports
    ray = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={ports['gcs']}",
        f"--dashboard-port={ports['dashboard']}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--temp-dir={spec.temp_dir}",
        "--disable-usage-stats",
        f"--ray-client-server-port={ports['client']}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['agent_http']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--min-worker-port={ports['workers_min']}",
        f"--max-worker-port={ports['workers_max']}",
    ]
    if spec.num_cpus is not None:
        ray.append(f"--num-cpus={spec.num_cpus}")
    flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session", "--chdir", str(spec.head_dir)]
    return [bwrap, *mounts, *flags, "--clearenv", *_env_args(spec), "--", *ray]


def _env_args(spec: HeadSpec) -> list[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(spec.head_dir),
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": spec.token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for key in (
        "PIP_RETRIES",
        "PIP_DEFAULT_TIMEOUT",
        "RUNTIME_ENV_RETRY_TIMES",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    args: list[str] = []
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


# Root causes worth naming, found in Ray's own logs, with the fix to suggest (deterministic ones are not retried).
_KNOWN_CAUSES: list[tuple[re.Pattern[str], str, bool]] = [
    (re.compile(r"AF_UNIX path length cannot exceed"), "Ray's socket paths are too long: set TMPDIR shorter", True),
    (re.compile(r"bwrap: .*"), "bubblewrap failed: install it or set GATEWAY_ISOLATION=shared", True),
    (re.compile(r"No such file or directory"), "a file Ray needs is not visible in the sandbox", True),
    (re.compile(r"[Aa]ddress already in use|port .* (is )?already in use|trying to use a port"), "", False),
    (re.compile(r"No space left on device"), "the disk is full", True),
    (re.compile(r"MemoryError|Cannot allocate memory"), "the machine is out of memory", False),
]


def root_cause(temp_dir: Path, output: str) -> tuple[str, str, bool]:
    """(the telling line, the fix to suggest, deterministic) from `ray start`'s output and the session's logs
    under Ray's `temp_dir`."""
    texts = [output]
    logs_dir = temp_dir / "session_latest" / "logs"
    with contextlib.suppress(OSError):
        for path in sorted(logs_dir.iterdir()):
            if path.suffix in (".err", ".out", ".log") and path.is_file():
                with path.open("rb") as handle:
                    handle.seek(max(0, path.stat().st_size - 64 * 1024))
                    texts.append(handle.read().decode(errors="replace"))
    for pattern, fix, deterministic in _KNOWN_CAUSES:
        for text in texts:
            for line in text.splitlines():
                if pattern.search(line):
                    return line.strip()[:500], fix, deterministic
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return ((errors or lines or ["(no output)"])[-1])[:500], "", False


class SandboxedHead:
    """Start, watch and stop one sandboxed head described by a `HeadSpec`."""

    def __init__(self, spec: HeadSpec, *, startup_timeout: float = 90.0):
        self.spec = spec
        self.startup_timeout = startup_timeout

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.spec.token}"}

    async def start(self) -> str:
        """Start the head and wait for its dashboard (with the token); the address, or HeadStartError."""
        spec = self.spec
        log = spec.head_dir / START_LOG
        command = sandbox_command(spec)

        def spawn() -> int:
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            return process.pid

        spec.pid = await asyncio.to_thread(spawn)
        spec.started = time.time()
        try:
            await self._wait_ready(log)
        except BaseException:
            await self.stop(remove=False)
            raise
        return spec.address

    async def _wait_ready(self, log: Path) -> None:
        spec = self.spec
        deadline = time.monotonic() + self.startup_timeout
        async with httpx.AsyncClient(timeout=2.0, headers=self.headers) as http:
            while True:
                if not self.alive():
                    await asyncio.sleep(0.2)  # let the last log lines land
                    self._raise_failed(log, "the Ray head exited during start-up")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{spec.address}/api/jobs/")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self._raise_failed(log, f"the Ray head did not answer within {self.startup_timeout:.0f} s")
                await asyncio.sleep(0.2)

    def _raise_failed(self, log: Path, what: str) -> None:
        output = ""
        with contextlib.suppress(OSError):
            output = log.read_text(errors="replace")[-20000:]
        line, fix, deterministic = root_cause(self.spec.temp_dir, output)
        hint = f"; fix: {fix}" if fix else ""
        raise HeadStartError(
            f"{what}: {line}{hint} (Ray's logs are kept in {self.spec.head_dir})",
            deterministic=deterministic,
            logs=self.spec.head_dir,
        )

    def _process(self) -> psutil.Process | None:
        pid = self.spec.pid
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            if self.spec.started is not None and abs(proc.create_time() - self.spec.started) > 5:
                return None  # the pid was reused by another process
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self._process() is not None

    async def answers(self) -> bool:
        """The dashboard answers with this head's token (adoption check)."""
        async with httpx.AsyncClient(timeout=3.0, headers=self.headers) as http:
            try:
                return (await http.get(f"{self.spec.address}/api/version")).status_code == 200
            except httpx.HTTPError:
                return False

    async def stop(self, *, remove: bool = True, grace: float = 8.0) -> None:
        """End every process of the head (SIGTERM to `ray start`, then SIGKILL to the sandbox), remove its dir."""
        await asyncio.to_thread(self._kill, grace)
        release_port_block(self.spec.ports.get("gcs"))
        if remove:
            await asyncio.to_thread(shutil.rmtree, self.spec.head_dir, True)

    def _kill(self, grace: float) -> None:
        outer = self._process()
        if outer is None:
            return
        family = [outer, *outer.children(recursive=True)]
        # The sandbox's init is the outer bwrap's child; `ray start --block` is the init's child.
        for proc in family[1:]:
            with contextlib.suppress(psutil.Error):
                if "ray" in " ".join(proc.cmdline()[:3]) and "start" in proc.cmdline():
                    proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([outer], timeout=grace)
        if alive:
            # Killing the namespace's first process ends everything in it.
            for proc in family[1:2] or family:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            with contextlib.suppress(psutil.Error):
                outer.kill()
            psutil.wait_procs(family, timeout=5)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(outer.pid, os.WNOHANG)
