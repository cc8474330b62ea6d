"""`/metrics`: Prometheus text after real traffic and jobs, bounded labels, the token and the off switch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from serverless_gateway.app import create_app
from serverless_gateway.config import Settings
from serverless_gateway.services import accounts
from tests.api.programs_support import RUN
from tests.conftest import TestUser, upload_program


@asynccontextmanager
async def own_app(settings: Settings, **changes: Any) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """An app of its own (its own metrics registry), beside the session's."""
    application = create_app(settings.model_copy(update=changes))
    async with application.router.lifespan_context(application):
        async with AsyncClient(transport=ASGITransport(app=application), base_url="http://testserver") as http:
            yield application, http


async def new_user(app: FastAPI, name: str) -> TestUser:
    async with app.state.gateway.sessionmaker.begin() as session:
        user, token = await accounts.create_user(session, username=name)
    return TestUser(id=user.id, name=name, token=token)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of the exposition, keyed by name and labels (prometheus-client's own parser)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_metrics_count_requests_by_route_template_and_jobs_by_status(settings: Settings) -> None:
    async with own_app(settings) as (app, client):
        alice = await new_user(app, f"m-{uuid.uuid4().hex[:6]}")
        await upload_program(client, alice, "hello")
        job_ids = []
        for _ in range(3):
            run = await client.post(RUN, headers=alice.headers, json={"title": "hello", "arguments": {}})
            assert run.status_code == 200, run.text
            job_ids.append(run.json()["id"])
        for job_id in job_ids:
            assert (await client.get(f"/api/v1/jobs/{job_id}/", headers=alice.headers)).status_code == 200
        assert (await client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=alice.headers)).status_code == 404
        assert (await client.get("/api/v1/jobs/", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await client.get("/no/such/path/12345")).status_code == 404
        stop = await client.post(f"/api/v1/jobs/{job_ids[0]}/stop/", headers=alice.headers)
        assert stop.status_code == 200, stop.text

        response = await client.get("/metrics")
        samples = parse(response.text)
        one_job = "/api/v1/jobs/{job_id}"
        assert value(samples, "gateway_http_requests_total", method="GET", route=one_job, status="200") == 3
        assert value(samples, "gateway_http_requests_total", method="GET", route=one_job, status="404") == 1
        assert value(samples, "gateway_http_requests_total", method="GET", route="/api/v1/jobs", status="401") == 1
        assert value(samples, "gateway_http_requests_total", method="GET", route="unmatched", status="404") == 1
        assert value(samples, "gateway_http_request_duration_seconds_count", method="POST", route=RUN.rstrip("/")) == 3
        assert value(samples, "gateway_jobs", status="QUEUED") == 2
        assert value(samples, "gateway_jobs", status="RUNNING") == 0
        assert value(samples, "gateway_jobs_finished_total", status="STOPPED") == 1
        # Bounded cardinality: no id, user name or raw path is ever a label value.
        label_values = {v for (_, labels) in samples for _, v in labels}
        for secret in (*job_ids, str(alice.id), alice.name, "/no/such/path/12345"):
            assert not any(secret in v for v in label_values), secret
        assert "12345" not in response.text


async def test_job_counts_are_cached_between_scrapes(settings: Settings, db_engine: Any) -> None:
    async with own_app(settings) as (app, client):
        alice = await new_user(app, f"m-{uuid.uuid4().hex[:6]}")
        await upload_program(client, alice, "hello")
        assert value(await scrape(client), "gateway_jobs", status="QUEUED") == 0
        assert (await client.post(RUN, headers=alice.headers, json={"title": "hello"})).status_code == 200
        # Within the cache period the count is not read again (no query per scrape)...
        assert value(await scrape(client), "gateway_jobs", status="QUEUED") == 0
        app.state.metrics._counts_read_at -= 10  # ...and once it has passed, it is
        assert value(await scrape(client), "gateway_jobs", status="QUEUED") == 1


async def test_two_apps_keep_their_own_registries(settings: Settings) -> None:
    async with own_app(settings) as (_, first), own_app(settings) as (_, second):
        for _ in range(4):
            await first.get("/api/v1/version/")
        await second.get("/api/v1/version/")
        assert (
            value(
                await scrape(first), "gateway_http_requests_total", method="GET", route="/api/v1/version", status="200"
            )
            == 4
        )
        assert (
            value(
                await scrape(second), "gateway_http_requests_total", method="GET", route="/api/v1/version", status="200"
            )
            == 1
        )


async def test_a_metrics_token_is_required_when_set(settings: Settings) -> None:
    async with own_app(settings, metrics_token=SecretStr("s3cret-scrape")) as (_, client):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape"}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert "message" in refused.json()
            assert refused.headers["www-authenticate"] == "Bearer"
        await scrape(client, Authorization="Bearer s3cret-scrape")


async def test_metrics_can_be_turned_off(settings: Settings) -> None:
    async with own_app(settings, metrics=False) as (_, client):
        response = await client.get("/metrics")
        assert response.status_code == 404
        assert response.json() == {"message": "Not found."}


async def test_concurrent_scrapes_during_traffic_all_parse(settings: Settings) -> None:
    async with own_app(settings) as (_, client):
        answers = await asyncio.gather(*(client.get(p) for p in ["/metrics", "/api/v1/version/"] * 10))
        for answer in answers:
            assert answer.status_code == 200
        parse(answers[0].text)


async def test_storage_failures_reaching_an_answer_or_a_probe_are_counted(settings: Settings, monkeypatch: Any) -> None:
    from serverless_gateway.storage import StorageUnavailable

    async with own_app(settings) as (app, client):

        @app.get("/_test/storage-down")
        async def down() -> None:
            raise StorageUnavailable("bucket gone")

        async def failing_check() -> None:
            raise StorageUnavailable("bucket gone")

        assert (await client.get("/_test/storage-down")).status_code == 503
        monkeypatch.setattr(app.state.gateway.storage, "check", failing_check)
        assert (await client.get("/readiness/")).status_code == 503
        samples = await scrape(client)
    assert value(samples, "gateway_storage_errors_total", op="api") == 1
    assert value(samples, "gateway_storage_errors_total", op="check") == 1


async def test_tasks_the_engine_starts_in_the_lifespan_record_into_that_apps_metrics(
    settings: Settings, monkeypatch: Any
) -> None:
    from serverless_gateway import metrics
    from serverless_gateway.engine import runtime

    class FakeEngine:
        def __init__(self) -> None:
            self.task = asyncio.create_task(self.loop())

        async def loop(self) -> None:
            await asyncio.sleep(0.05)  # later, like an engine pass: the context was copied at creation
            metrics.record_ray_error("submit")
            metrics.set_clusters("running", 2)

        def wake(self) -> None: ...

        async def close(self) -> None:
            await self.task

        async def readiness_problem(self) -> str | None:
            return None

    async def fake_start(state: Any) -> FakeEngine:
        return FakeEngine()

    monkeypatch.setattr(runtime, "start_engine", fake_start)
    async with own_app(settings, run_engine=True) as (app, client), own_app(settings) as (_, other):
        await app.state.gateway.engine.task
        samples = await scrape(client)
        assert value(await scrape(other), "gateway_ray_errors_total", kind="submit") == 0
    assert value(samples, "gateway_ray_errors_total", kind="submit") == 1
    assert value(samples, "gateway_clusters", state="running") == 2
    assert value(samples, "gateway_engine_up") == 1
    assert metrics.current() is None  # nothing leaks out of the lifespan
