"""End-to-end fixtures: the official client in its own virtualenv against a real gateway, Ray and PostgreSQL.

One gateway per session: `serverless-gateway serve` in a subprocess (it starts and stops its own local Ray
head), a throwaway database, accounts made with the CLI. Scenario scripts under `scenarios/` run with the
client's python and exit non-zero when a check fails; they all start together once the gateway is ready
(most of their time is spent waiting for Ray), the ones whose jobs install qiskit-serverless first.

Environment: GATEWAY_COMPAT_PYTHON uses that interpreter (with qiskit-serverless installed) instead of the cached
virtualenv; GATEWAY_COMPAT_ARTIFACTS=<dir> keeps every scenario's output and the gateway's log there.
Progress lines with timings show with `pytest -s`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg
import psutil
import pytest
from sqlalchemy.engine import make_url

from tests.database import server_url, throwaway_name

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
DOCS_EXAMPLE = ROOT / "docs" / "examples" / "hello"
CLI = Path(sys.executable).with_name("serverless-gateway")
# This user's third job must wait QUEUED (stop scenario), so the per-user running cap is small.
RUNNING_CAP_PER_USER = 2
START_TIMEOUT = 300.0  # `ray start` alone can take minutes on a loaded machine
# What functions may depend on, as an operator would restrict it (dependencies_versions() reports it).
DEPENDENCY_ALLOWLIST = ["qiskit-serverless"]
# Stopping the Ray head removes its temp dir, pip environments included: that takes a while.
STOP_TIMEOUT = 120.0


_T0 = time.monotonic()


def note(message: str) -> None:
    """Progress with the time since the session started (shown with `pytest -s`)."""
    sys.stderr.write(f"[compat {time.monotonic() - _T0:6.1f}s] {message}\n")


@pytest.fixture(autouse=True)
def _clean_database() -> None:
    """Replaces the API tests' per-test TRUNCATE: this suite has its own database and gateway."""


@pytest.fixture(scope="package")
def venv_build() -> Iterator[subprocess.Popen[str] | None]:
    """Start building (or finding) the client's cached virtualenv at once; it overlaps the gateway's start."""
    if os.environ.get("GATEWAY_COMPAT_PYTHON"):
        yield None
        return
    process = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "compat-venv.sh")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="package")
def client_python(venv_build: subprocess.Popen[str] | None) -> str:
    """The official client's python: GATEWAY_COMPAT_PYTHON, else the cached venv from scripts/compat-venv.sh."""
    if venv_build is None:
        return os.environ["GATEWAY_COMPAT_PYTHON"]
    try:
        stdout, stderr = venv_build.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("building the client's virtualenv took over 600 s")
    if venv_build.returncode != 0:
        pytest.fail(f"could not build the client's virtualenv:\n{stderr[-4000:]}")
    note("client virtualenv ready")
    return stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _admin_exec(base: str, sql: str) -> None:
    admin = make_url(base).set(drivername="postgresql", database="postgres")

    async def run() -> None:
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@dataclass
class Gateway:
    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no gateway log)"
        return "\n".join(text.splitlines()[-lines:])

    def cli(self, *args: str) -> str:
        """Run `serverless-gateway ARGS` against this gateway's database; stdout on success."""
        done = subprocess.run([str(CLI), *args], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(
                f"`serverless-gateway {' '.join(args)}` exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done.stdout


def _ours(data_dir: Path) -> list[psutil.Process]:
    """Processes started for this gateway (Ray's carry the data dir in their command line) and their children."""
    mark = str(data_dir)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if mark in cmdline and proc.pid != os.getpid():
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _wait_ready(gateway: Gateway) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            pytest.fail(f"the gateway exited with {gateway.process.returncode}:\n{gateway.log_tail()}")
        try:
            with urllib.request.urlopen(f"{gateway.url}/api/v1/readiness/", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:300]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    pytest.fail(f"the gateway was not ready after {START_TIMEOUT} s ({last}):\n{gateway.log_tail()}")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_gateway(gateway: Gateway) -> list[str]:
    """SIGTERM the gateway; it must exit and take its Ray head with it. Returns the problems seen."""
    problems: list[str] = []
    children = []
    try:
        children = psutil.Process(gateway.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    gateway.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        gateway.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        problems.append(f"the gateway did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM")
        gateway.process.kill()
        gateway.process.wait(timeout=10)
    note(f"gateway exited {time.monotonic() - started:.1f} s after SIGTERM")
    deadline = time.monotonic() + 20
    strays: list[psutil.Process] = []
    while True:
        strays = [p for p in {*children, *_ours(gateway.data_dir)} if _alive(p)]
        if not strays or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if strays:
        described = []
        for proc in strays:
            try:
                described.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
                proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        problems.append("processes left running after the gateway stopped (killed now):\n" + "\n".join(described))
    return problems


@pytest.fixture(scope="package")
def gateway(venv_build: subprocess.Popen[str] | None) -> Iterator[Gateway]:
    """`serverless-gateway serve` on a free port with a throwaway database; it starts its own Ray head."""
    base, server = server_url()
    database = throwaway_name()
    _admin_exec(base, f'CREATE DATABASE "{database}"')
    data_dir = Path(tempfile.mkdtemp(prefix="gwc-"))  # short: Ray's socket paths live under it
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "RAY_"))}
    env.update(
        GATEWAY_DATABASE_URL=make_url(base).set(database=database).render_as_string(hide_password=False),
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_MAX_RUNNING_JOBS_PER_USER=str(RUNNING_CAP_PER_USER),
        GATEWAY_DEPENDENCY_ALLOWLIST=json.dumps(DEPENDENCY_ALLOWLIST),
        # This suite checks what the official client sends and reads, with eight users at once. Under isolation
        # each of them (and each provider pair) starts a sandboxed head of ~700 MiB and builds its own pip
        # environment: on two cores that is minutes of start-up the client's behaviour does not depend on.
        # Isolation has its own suite over the REST API (tests/engine/test_isolation.py); set
        # GATEWAY_COMPAT_ISOLATION=required to run this suite on sandboxed tenant heads too.
        GATEWAY_ISOLATION=os.environ.get("GATEWAY_COMPAT_ISOLATION", "shared"),
        PYTHONUNBUFFERED="1",
    )
    log_path = data_dir / "gateway.log"
    log: IO[bytes] = log_path.open("wb")
    note("migrating a throwaway database")
    # Migrate first, so the CLI can create accounts while `serve` is still starting its Ray head.
    migrated = subprocess.run([str(CLI), "migrate"], env=env, capture_output=True, text=True, timeout=180)
    if migrated.returncode != 0:
        _admin_exec(base, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        pytest.fail(f"`serverless-gateway migrate` failed:\n{migrated.stdout}\n{migrated.stderr}")
    note("starting `serverless-gateway serve`")
    process = subprocess.Popen(
        [str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
        start_new_session=True,
    )
    gw = Gateway(url=f"http://127.0.0.1:{port}", data_dir=data_dir, env=env, process=process, log_path=log_path)
    problems: list[str] = []
    try:
        yield gw
    finally:
        problems = _stop_gateway(gw)
        log.close()
        try:
            _admin_exec(base, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            if server is not None:
                server.cleanup()
        if problems:
            sys.stderr.write(f"gateway log tail:\n{gw.log_tail()}\n")
        shutil.rmtree(data_dir, ignore_errors=True)
    if problems:
        pytest.fail("\n".join(problems))


# Who does what: each scenario has its own user, so job lists and files do not mix.
USERS = ("alice", "bob", "fiona", "quinn", "hana", "pam", "ursula", "victor")


def _cli_all(gateway: Gateway, commands: list[tuple[str, ...]]) -> list[str]:
    """Run independent CLI commands at once (each one is a Python start-up, the slow part)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda command: gateway.cli(*command), commands))


@pytest.fixture(scope="package")
def accounts(gateway: Gateway) -> dict[str, str]:
    """Users, groups and a provider made with the CLI, as an operator would; name -> token.

    Runs while the gateway starts its Ray head; returns once the gateway answers ready.
    """
    outputs = _cli_all(gateway, [("user", "create", name) for name in USERS])
    for name, out in zip(USERS, outputs, strict=True):
        lines = out.strip().splitlines()
        assert lines, f"`user create {name}` printed no token"
        gateway.tokens[name] = lines[-1].strip()
    _cli_all(gateway, [("group", "create", g) for g in ("acme-admins", "acme-users", "acme-viewers")])
    _cli_all(
        gateway,
        [
            ("group", "add-user", "acme-admins", "pam"),
            ("group", "add-user", "acme-users", "ursula"),
            ("group", "add-user", "acme-users", "victor"),
            ("group", "add-user", "acme-viewers", "bob"),
            ("provider", "create", "acme", "--admin-group", "acme-admins"),
        ],
    )
    note("accounts created")
    _wait_ready(gateway)
    note("gateway ready")
    return gateway.tokens


@dataclass
class Outcome:
    """How a scenario script ended."""

    name: str
    returncode: int | None
    output: str

    def check(self, gateway: Gateway) -> None:
        if self.returncode != 0:
            pytest.fail(
                f"scenario {self.name} exited {self.returncode}\n--- its output:\n{self.output[-12000:]}\n"
                f"--- gateway log tail:\n{gateway.log_tail()}",
                pytrace=False,
            )


@dataclass
class Runner:
    gateway: Gateway
    python: str
    workdir: Path

    def env(self, user: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ENV_", "PYTHON"))}
        env.update(
            GATEWAY_URL=self.gateway.url,
            GATEWAY_TOKEN=self.gateway.tokens[user],
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            **extra,
        )
        return env

    def command(self, script: str | Path) -> list[str]:
        path = Path(script)
        return [self.python, str(path if path.is_absolute() else SCENARIOS / f"{script}.py")]

    def cwd(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, script: str, *, user: str, timeout: float = 300, **env: str) -> Outcome:
        """Run a scenario to its end; its output file (SCENARIO_OUTPUT) is read back into `env` callers."""
        cwd = self.cwd(script)
        started = time.monotonic()
        try:
            done = subprocess.run(
                self.command(script),
                cwd=cwd,
                env=self.env(user, SCENARIO_OUTPUT=str(cwd / "output.json"), **env),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return Outcome(script, None, output + f"\n(timed out after {timeout} s)")
        (cwd / "output.log").write_text(done.stdout)
        note(f"scenario {script} exited {done.returncode} after {time.monotonic() - started:.1f} s")
        return Outcome(script, done.returncode, done.stdout)

    def output_of(self, script: str) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.workdir / script / "output.json").read_text())
        return data


@pytest.fixture(scope="package")
def runner(gateway: Gateway, accounts: dict[str, str], client_python: str) -> Iterator[Runner]:
    workdir = Path(tempfile.mkdtemp(prefix="gwc-scenarios-"))
    yield Runner(gateway=gateway, python=client_python, workdir=workdir)
    keep = os.environ.get("GATEWAY_COMPAT_ARTIFACTS")
    if keep:
        # Every scenario's output.log (and the gateway's log) for a look after the run.
        target = Path(keep)
        target.mkdir(parents=True, exist_ok=True)
        for log in workdir.glob("*/output.log"):
            shutil.copy(log, target / f"{log.parent.name}.log")
        shutil.copy(gateway.log_path, target / "gateway.log")
    shutil.rmtree(workdir, ignore_errors=True)


class Background:
    """A scenario running in the background; `wait()` collects its outcome."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str]):
        self.name = name
        self.started = time.monotonic()
        self.log_path = cwd / "output.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.ended: float | None = None
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        self.process.wait()
        self.ended = time.monotonic()
        note(f"scenario {self.name} ended ({self.process.returncode}) after {self.ended - self.started:.1f} s")

    def wait(self, timeout: float) -> Outcome:
        try:
            code: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self._log.close()
        output = self.log_path.read_text(errors="replace")
        if code is None:
            output += f"\n(timed out after {timeout} s)"
        return Outcome(self.name, code, output)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def start(runner: Runner, script: str, *, user: str, **env: str) -> Background:
    """Start a scenario script in the background."""
    cwd = runner.cwd(script)
    return Background(
        script, runner.command(script), cwd, runner.env(user, SCENARIO_OUTPUT=str(cwd / "output.json"), **env)
    )


@dataclass
class ProviderFlow:
    """The provider's uploads, the CLI grants, the in-job scenario (started in the background), then a user of
    the granted group and the provider's admin, in that order."""

    setup: Outcome
    grants_error: str | None = None
    inside_job: Background | None = None
    user: Outcome | None = None
    admin: Outcome | None = None


def _provider_flow(runner: Runner) -> ProviderFlow:
    flow = ProviderFlow(setup=runner.run("provider_setup", user="pam", timeout=300))
    if flow.setup.returncode != 0:
        return flow
    try:
        _cli_all(
            runner.gateway,
            [
                *(
                    ("program", "grant", title, "--provider", "acme", "--group", "acme-users", "--run")
                    for title in ("helpers", "plain")
                ),
                ("program", "grant", "helpers", "--provider", "acme", "--group", "acme-viewers", "--view"),
            ],
        )
    except AssertionError as exc:
        flow.grants_error = str(exc)
        return flow
    note("grants done")
    flow.inside_job = start(runner, "inside_job", user="victor", GATEWAY_PROVIDER_TOKEN=runner.gateway.tokens["pam"])
    flow.user = runner.run(
        "provider_user", user="ursula", timeout=420, GATEWAY_OTHER_TOKEN=runner.gateway.tokens["bob"]
    )
    if flow.user.returncode == 0:
        job_id = runner.output_of("provider_user")["job_id"]
        flow.admin = runner.run("provider_admin", user="pam", timeout=300, USER_JOB_ID=job_id)
    return flow


@dataclass
class Scenarios:
    """Every scenario, started together as soon as the gateway is ready: most of their time is spent waiting
    for Ray, so they overlap well. Each test waits for its own."""

    background: dict[str, Background]
    provider_future: Future[ProviderFlow]

    def provider(self) -> ProviderFlow:
        return self.provider_future.result(timeout=900)


@pytest.fixture(scope="package", autouse=True)
def scenarios(runner: Runner) -> Iterator[Scenarios]:
    """Start the docs example and the in-job scenario first: their jobs install qiskit-serverless (once)."""
    tokens = runner.gateway.tokens
    example_dir = runner.cwd("docs-example")
    shutil.copytree(DOCS_EXAMPLE, example_dir, dirs_exist_ok=True)
    background = {
        "docs example": Background(
            "docs example", runner.command(example_dir / "run_hello.py"), example_dir, runner.env("hana")
        )
    }
    with ThreadPoolExecutor(max_workers=1) as pool:
        provider_future = pool.submit(_provider_flow, runner)
        background["functions"] = start(runner, "functions", user="fiona", GATEWAY_OTHER_TOKEN=tokens["bob"])
        background["jobs"] = start(runner, "jobs", user="alice", GATEWAY_OTHER_TOKEN=tokens["bob"])
        background["files"] = start(runner, "files", user="fiona", GATEWAY_OTHER_TOKEN=tokens["bob"])
        background["stop"] = start(runner, "stop", user="quinn")
        note("scenarios started")
        started = Scenarios(background=background, provider_future=provider_future)
        try:
            yield started
        finally:
            for scenario in background.values():
                scenario.kill()
            try:
                inside = provider_future.result(timeout=900).inside_job
            except Exception:  # the provider's tests report it
                inside = None
            if inside is not None:
                inside.kill()
