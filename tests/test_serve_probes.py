"""`serverless-gateway serve` as a subprocess: SIGTERM turns readiness 503 first, then it stops; JSON log lines."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.cli_support import cli_env, serving


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(
        database_url=database_url,
        data_dir=str(tmp_path / "data"),
        run_engine="false",
        ray_address="http://127.0.0.1:9",  # nothing listens there: readiness must not care
        log_format="json",
        shutdown_delay_seconds="3",
        shutdown_grace_seconds="5",
    )


def test_sigterm_turns_readiness_503_before_the_listener_closes(env: dict[str, str], tmp_path: Path) -> None:
    with serving(env, tmp_path) as served:
        served.wait_live()
        with httpx.Client(base_url=served.url, timeout=5) as http:
            ready = http.get("/api/v1/readiness/")
            assert ready.status_code == 200, ready.text
            served.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)
            draining = http.get("/api/v1/readiness/")
            assert draining.status_code == 503
            assert draining.json() == {"status": "unavailable", "message": "shutting down"}
            assert http.get("/api/v1/liveness/").status_code == 200  # still serving during the delay
            assert http.get("/api/v1/version/").status_code == 200
        assert served.process.wait(timeout=30) == 0
        assert 2.5 < time.monotonic() - signalled < 20
    assert "Traceback" not in served.output()
    lines = [line for line in served.output().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object, uvicorn's included
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("start-up: database migrations applied in ") for m in messages), messages
    assert any("listening on" in m and "start-up took" in m for m in messages), messages
    assert any(m.startswith("SIGTERM: readiness answers 503") for m in messages), messages
    assert any(entry["logger"].startswith("uvicorn") for entry in entries), messages
    requests = [entry for entry in entries if entry.get("route") == "/api/v1/version"]
    assert requests
    assert requests[0]["status"] == 200
    assert requests[0]["method"] == "GET"
    assert isinstance(requests[0]["duration_ms"], float)
    assert requests[0]["request_id"]
