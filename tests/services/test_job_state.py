"""The transition function observes the dispatch waits and run times (metrics), and keeps terminal final."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serverless_gateway import metrics
from serverless_gateway.models import Job, JobStatus
from serverless_gateway.services.job_state import InvalidTransition, transition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new_job() -> Job:
    return Job(id=uuid.uuid4(), status=JobStatus.QUEUED.value, created_at=T0)


def samples(m: metrics.GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_waits_and_run_time_are_observed_at_each_transition() -> None:
    m = metrics.GatewayMetrics()
    job = new_job()
    with metrics.use(m):
        transition(job, JobStatus.PENDING, now=T0 + timedelta(seconds=2))
        job.submitted_at = T0 + timedelta(seconds=3)
        transition(job, JobStatus.RUNNING, now=T0 + timedelta(seconds=10))
        transition(job, JobStatus.FAILED, now=T0 + timedelta(seconds=70))
        with pytest.raises(InvalidTransition):
            transition(job, JobStatus.SUCCEEDED)
    found = samples(m)
    assert found[("gateway_job_queued_to_pending_seconds_sum", frozenset())] == 2
    assert found[("gateway_job_pending_to_running_seconds_sum", frozenset())] == 7
    assert found[("gateway_job_run_seconds_sum", frozenset({("status", "FAILED")}))] == 60
    assert found[("gateway_job_run_seconds_count", frozenset({("status", "FAILED")}))] == 1
    assert found[("gateway_jobs_finished_total", frozenset({("status", "FAILED")}))] == 1
    assert ("gateway_jobs_finished_total", frozenset({("status", "SUCCEEDED")})) not in found


def test_a_job_stopped_before_it_started_has_no_run_time() -> None:
    m = metrics.GatewayMetrics()
    with metrics.use(m):
        transition(new_job(), JobStatus.STOPPED, now=T0 + timedelta(seconds=1))
    found = samples(m)
    assert found[("gateway_jobs_finished_total", frozenset({("status", "STOPPED")}))] == 1
    assert found.get(("gateway_job_run_seconds_count", frozenset({("status", "STOPPED")})), 0) == 0
    assert found[("gateway_job_queued_to_pending_seconds_count", frozenset())] == 0


def test_without_current_metrics_nothing_is_recorded_and_nothing_fails() -> None:
    m = metrics.GatewayMetrics()
    transition(new_job(), JobStatus.PENDING)
    metrics.record_ray_error("submit")
    metrics.record_storage_error("put")
    metrics.set_clusters("running", 3)
    assert samples(m)[("gateway_job_queued_to_pending_seconds_count", frozenset())] == 0


def test_engine_helpers_record_into_the_current_metrics() -> None:
    m = metrics.GatewayMetrics()
    with metrics.use(m):
        metrics.record_ray_error("submit")
        metrics.record_ray_error("submit")
        metrics.record_storage_error("get")
        metrics.set_clusters("idle", 2)
    found = samples(m)
    assert found[("gateway_ray_errors_total", frozenset({("kind", "submit")}))] == 2
    assert found[("gateway_storage_errors_total", frozenset({("op", "get")}))] == 1
    assert found[("gateway_clusters", frozenset({("state", "idle")}))] == 2
