"""One log line per request (method, route, status, duration, request id, user id); no secret in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from serverless_gateway.config import Settings
from serverless_gateway.log_config import make_handler
from tests.api.programs_support import RUN
from tests.api.test_metrics import new_user, own_app
from tests.conftest import upload_program


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every line any logger writes, at DEBUG, as the JSON format renders it."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def request_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [e for e in entries(stream) if e["logger"] == "serverless_gateway.request"]


async def test_each_request_logs_one_line_with_its_route_user_and_request_id(
    settings: Settings, captured: io.StringIO
) -> None:
    async with own_app(settings) as (app, client):
        alice = await new_user(app, "log-alice")
        mine = await client.get("/api/v1/jobs/", headers={**alice.headers, "X-Request-ID": "abc-123.x"})
        anonymous = await client.get("/api/v1/version/")
        missing = await client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000/", headers=alice.headers)
    assert mine.headers["x-request-id"] == "abc-123.x"
    generated = anonymous.headers["x-request-id"]
    assert len(generated) == 32
    lines = request_lines(captured)
    assert [(e["method"], e["route"], e["status"]) for e in lines] == [
        ("GET", "/api/v1/jobs", 200),
        ("GET", "/api/v1/version", 200),
        ("GET", "/api/v1/jobs/{job_id}", 404),
    ]
    assert lines[0]["request_id"] == "abc-123.x"
    assert lines[0]["user_id"] == str(alice.id)
    assert lines[1]["request_id"] == generated
    assert "user_id" not in lines[1]
    assert lines[2]["user_id"] == str(alice.id)
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in lines)
    assert missing.headers["x-request-id"] == lines[2]["request_id"]


async def test_a_request_with_a_body_logs_its_user_too(settings: Settings, captured: io.StringIO) -> None:
    """A body's request is authenticated by the body guard, outside the request's log context: its line still
    names the user."""
    async with own_app(settings) as (app, client):
        alice = await new_user(app, "log-poster")
        refused = await client.post("/api/v1/programs/run/", headers=alice.headers, json={"title": "nothing-here"})
    assert refused.status_code == 404, refused.text
    (line,) = request_lines(captured)
    assert (line["method"], line["route"], line["status"]) == ("POST", "/api/v1/programs/run", 404)
    assert line["user_id"] == str(alice.id)


@pytest.mark.parametrize(
    "hostile",
    [b"a" * 129, b"two words", b"tab\there", b"<script>", b"id;rm -rf", b"", "\u00e9t\u00e9".encode()],
)
async def test_a_hostile_request_id_is_replaced(settings: Settings, captured: io.StringIO, hostile: bytes) -> None:
    async with own_app(settings) as (_, client):
        answer = await client.get("/api/v1/version/", headers=[(b"X-Request-ID", hostile)])
    given = answer.headers["x-request-id"]
    assert given.encode() != hostile
    assert len(given) == 32
    assert int(given, 16) >= 0
    assert request_lines(captured)[0]["request_id"] == given


async def test_no_token_or_argument_reaches_any_log_line(settings: Settings, captured: io.StringIO) -> None:
    secret_argument = "hunter2-argument-value"
    secret_env = "env-secret-value-77"
    async with own_app(settings) as (app, client):
        alice = await new_user(app, "log-bob")
        await upload_program(client, alice, "secretive", env_vars=json.dumps({"API_KEY": secret_env}))
        run = await client.post(
            RUN,
            headers={**alice.headers, "X-Request-ID": "run-1"},
            json={"title": "secretive", "arguments": {"password": secret_argument}, "config": {}},
        )
        assert run.status_code == 200, run.text
        job_id = run.json()["id"]
        for path in (f"/api/v1/jobs/{job_id}/", f"/api/v1/jobs/{job_id}/result/", "/api/v1/jobs/?limit=5"):
            await client.get(path, headers=alice.headers)
        await client.get(f"/api/v1/jobs/{job_id}/?token={alice.token}", headers={"Authorization": "Bearer gw_bad"})
        await client.post(RUN, headers=alice.headers, json={"title": "nope", "arguments": {"p": secret_argument}})
    # The test's own HTTP client logs its URLs (a query-string token too): only the gateway's lines count.
    text = "\n".join(json.dumps(e) for e in entries(captured) if not e["logger"].startswith(("httpx", "httpcore")))
    assert request_lines(captured), "requests were logged"
    for secret in (alice.token, secret_argument, secret_env, "gw_bad"):
        assert secret not in text
