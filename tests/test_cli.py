"""The `serverless-gateway` command run as a subprocess, as an operator would: tokens, settings errors, serve."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from httpx import AsyncClient

from serverless_gateway.server import default_public_url
from tests.cli_support import CLI, cli_env, one_line_error, run_cli, serving

if TYPE_CHECKING:
    pass


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(database_url=database_url, data_dir=str(tmp_path / "data"))


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, env=env)


async def test_user_create_prints_only_a_token_that_authenticates(env: dict[str, str], client: AsyncClient) -> None:
    done = await cli("user", "create", "carol", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    assert token.startswith("gw_")
    assert (await client.get("/api/v1/programs/", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    assert (await client.get("/api/v1/programs/", headers={"Authorization": "Bearer gw_wrong"})).status_code == 401


@pytest.mark.parametrize("command", [("user", "create", "x"), ("serve",)])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path, command: tuple[str, ...]) -> None:
    env = cli_env(data_dir=str(tmp_path), max_page_size="lots")
    message = one_line_error(run_cli(*command, env=env))
    assert message.startswith("serverless-gateway: invalid setting GATEWAY_MAX_PAGE_SIZE: ")


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        env = cli_env(database_url=f"postgresql://postgres@127.0.0.1:{port}/nowhere", data_dir=str(tmp_path))
        for command in (("user", "create", "x"), ("serve", "--port", "0")):
            assert "cannot use the database" in one_line_error(run_cli(*command, env=env))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_serve_answers_and_stops_cleanly_on_a_signal(env: dict[str, str], tmp_path: Path, sig: int) -> None:
    env = {**env, "GATEWAY_RUN_ENGINE": "false", "GATEWAY_RAY_ADDRESS": "http://127.0.0.1:9"}
    with serving(env, tmp_path) as served:
        served.wait_live()
        assert httpx.get(f"{served.url}/api/v1/version/", timeout=5).json()["version"]
        assert httpx.get(f"{served.url}/liveness/", timeout=5).status_code == 200
        assert served.stop(sig) == 0
    output = served.output()
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
    assert "Created the user 'dev'" not in output, "a configured database gets no dev user"
    # uvicorn only picks uvloop itself when it runs the loop; serve runs it, and must pick it too.
    assert "event loop uvloop, HTTP protocol uvicorn.protocols.http.httptools_impl" in output


def test_serve_on_a_busy_port_fails_at_once(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = str(sock.getsockname()[1])
        done = run_cli("serve", "--host", "127.0.0.1", "--port", port, env={**env, "GATEWAY_RUN_ENGINE": "false"})
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(done)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000"),
        ("0.0.0.0", 8080, "http://127.0.0.1:8080"),
        ("::", 8000, "http://[::1]:8000"),
        ("gateway.internal", 80, "http://gateway.internal:80"),
    ],
)
def test_the_default_public_url_is_reachable_from_this_machine(host: str, port: int, expected: str) -> None:
    assert default_public_url(host, port) == expected


def test_the_dispatcher_needs_a_public_url(env: dict[str, str]) -> None:
    assert "GATEWAY_PUBLIC_URL" in one_line_error(run_cli("dispatcher", env=env))


def test_the_dispatcher_runs_the_engine_until_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "GATEWAY_RAY_ADDRESS": "http://127.0.0.1:9", "GATEWAY_PUBLIC_URL": "http://127.0.0.1:8000"}
    log_path = tmp_path / "dispatcher.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*CLI, "dispatcher"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while "dispatcher running" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert "dispatcher stopped" in log_path.read_text()
