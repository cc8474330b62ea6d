"""`?follow=true` on an ended job: the stored log as Server-Sent Events, filtered for users, resumable."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.jobs_support import add_job, add_program
from tests.api.programs_support import make_provider

if TYPE_CHECKING:
    from tests.conftest import TestUser

JOBS = "/api/v1/jobs/"
LOG = "one\n[PRIVATE] the provider's key\ntwo\r\nthree\n"


def parse_events(text: str) -> list[dict[str, Any]]:
    """Events as {"event", "id", "data"}; comments dropped (a small reader of the SSE format)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {"event": "message", "id": None, "data": []}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            if name == "data":
                fields["data"].append(value)
            else:
                fields[name] = value
        if fields["data"]:
            events.append(fields)
    return events


async def ended_provider_job(app: FastAPI, alice: TestUser, carol: TestUser) -> object:
    await app.state.gateway.storage.put_bytes("logs/follow.log", LOG.encode())
    await make_provider(app, "acme", carol)
    solver = await add_program(app, carol, "solver", provider="acme")
    return await add_job(app, alice, solver, status="SUCCEEDED", logs_key="logs/follow.log")


async def test_an_ended_jobs_log_is_sent_then_the_end(
    app: FastAPI, client: AsyncClient, alice: TestUser, make_user: Any
) -> None:
    carol = await make_user("carol")
    job_id = await ended_provider_job(app, alice, carol)
    response = await client.get(f"{JOBS}{job_id}/logs/", headers=alice.headers, params={"follow": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert [e["event"] for e in events] == ["message", "end"]
    assert events[0]["data"] == ["one", "two", "three"]  # the private line left out, `\r\n` a line end too
    assert int(events[0]["id"]) == len(LOG.encode())
    assert json.loads(events[1]["data"][0]) == {"status": "SUCCEEDED", "next_offset": len(LOG.encode())}

    provider = await client.get(f"{JOBS}{job_id}/provider-logs/", headers=carol.headers, params={"follow": "true"})
    assert "the provider's key" in provider.text
    stranger = await make_user("mallory")
    denied = await client.get(f"{JOBS}{job_id}/logs/", headers=stranger.headers, params={"follow": "true"})
    assert denied.status_code == 404
    assert denied.json()["message"]  # the one error envelope, not an event stream


async def test_last_event_id_resumes_and_bad_ids_are_refused(
    app: FastAPI, client: AsyncClient, alice: TestUser, make_user: Any
) -> None:
    carol = await make_user("carol")
    job_id = await ended_provider_job(app, alice, carol)
    after_two = len(b"one\n[PRIVATE] the provider's key\ntwo\r\n")
    url = f"{JOBS}{job_id}/provider-logs/"
    resumed = await client.get(
        url, headers={**carol.headers, "Last-Event-ID": str(after_two)}, params={"follow": "true"}
    )
    events = parse_events(resumed.text)
    assert events[0]["data"] == ["three"]
    for bad in ("-1", "abc", "1" * 30):
        refused = await client.get(url, headers={**carol.headers, "Last-Event-ID": bad}, params={"follow": "true"})
        assert refused.status_code in (400, 422), (bad, refused.text)
        assert refused.json()["message"]
    with_tail = await client.get(url, headers=carol.headers, params={"follow": "true", "tail": 2})
    assert with_tail.status_code == 400
