"""Prometheus metrics of one app, on its own registry, with small functions the API and the engine call.

The app's `GatewayMetrics` is made current (a context variable) by its lifespan, so engine tasks started there
record into it, and by the request middleware for each request; outside both, the `record_*` functions do nothing.
No metric has a per-user or per-job label, so the number of series stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of the text exposition format."""

ACTIVE_JOB_STATUSES = ("QUEUED", "PENDING", "RUNNING")
CLUSTER_STATES = ("starting", "running", "idle")
JOB_COUNTS_TTL_SECONDS = 5.0

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_RUN_BUCKETS = (0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0)


class GatewayMetrics:
    """Every metric of one gateway app, registered on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by route template.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request (until the last body byte is sent).",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.jobs = Gauge(
            "gateway_jobs", "Jobs not yet finished, by status (read at most every 5 s).", ["status"], registry=r
        )
        self.jobs_finished = Counter(
            "gateway_jobs_finished", "Jobs that reached a terminal status in this process.", ["status"], registry=r
        )
        self.queued_to_pending = Histogram(
            "gateway_job_queued_to_pending_seconds",
            "From a job's creation to its hand-over to Ray (PENDING).",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.pending_to_running = Histogram(
            "gateway_job_pending_to_running_seconds",
            "From Ray accepting a job to the job running.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "gateway_job_run_seconds",
            "From a job starting to it ending, by terminal status.",
            ["status"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.ray_errors = Counter("gateway_ray_errors", "Failed calls to Ray, by kind of call.", ["kind"], registry=r)
        self.storage_errors = Counter(
            "gateway_storage_errors", "Failed calls to the storage backend, by operation.", ["op"], registry=r
        )
        self.clusters = Gauge("gateway_clusters", "Tenant Ray clusters, by state.", ["state"], registry=r)
        self.engine_up = Gauge(
            "gateway_engine_up",
            "1 when this process's engine reaches Ray, 0 when not, absent without an engine.",
            registry=r,
        )
        self._counts_read_at = float("-inf")

    def counts_stale(self, now: float | None = None) -> bool:
        """Whether the job counts are older than the cache period and should be read again."""
        return (now if now is not None else time.monotonic()) - self._counts_read_at >= JOB_COUNTS_TTL_SECONDS

    def set_job_counts(self, counts: dict[str, int], now: float | None = None) -> None:
        """Set the jobs gauge from a fresh count (statuses missing from `counts` have no job)."""
        for status in ACTIVE_JOB_STATUSES:
            self.jobs.labels(status=status).set(counts.get(status, 0))
        self._counts_read_at = now if now is not None else time.monotonic()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


_current: ContextVar[GatewayMetrics | None] = ContextVar("gateway_metrics", default=None)


def current() -> GatewayMetrics | None:
    """The metrics of the app this code runs for, if any."""
    return _current.get()


@contextmanager
def use(metrics: GatewayMetrics | None) -> Iterator[None]:
    """Make `metrics` current for the block (and for tasks started inside it)."""
    token = _current.set(metrics)
    try:
        yield
    finally:
        _current.reset(token)


def record_ray_error(kind: str) -> None:
    """Count a failed call to Ray; `kind` is a fixed word such as "submit", "status", "stop" or "logs"."""
    metrics = _current.get()
    if metrics is not None:
        metrics.ray_errors.labels(kind=kind).inc()


def record_storage_error(op: str) -> None:
    """Count a failed storage call; `op` is a fixed word such as "put", "get", "delete" or "list"."""
    metrics = _current.get()
    if metrics is not None:
        metrics.storage_errors.labels(op=op).inc()


def set_clusters(state: str, n: int) -> None:
    """Set how many tenant clusters are in `state` ("starting", "running" or "idle")."""
    metrics = _current.get()
    if metrics is not None:
        metrics.clusters.labels(state=state).set(n)


def _seconds(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    return max(0.0, (end - start).total_seconds())


def record_transition(
    *,
    old: str,
    new: str,
    at: datetime,
    created_at: datetime | None,
    submitted_at: datetime | None,
    started_at: datetime | None,
) -> None:
    """Observe the waits and run time a status change ends (called by the one transition function)."""
    metrics = _current.get()
    if metrics is None:
        return
    if new == "PENDING" and old == "QUEUED":
        waited = _seconds(created_at, at)
        if waited is not None:
            metrics.queued_to_pending.observe(waited)
    elif new == "RUNNING" and old == "PENDING":
        waited = _seconds(submitted_at, at)
        if waited is not None:
            metrics.pending_to_running.observe(waited)
    if new in ("SUCCEEDED", "FAILED", "STOPPED"):
        metrics.jobs_finished.labels(status=new).inc()
        ran = _seconds(started_at, at)
        if ran is not None:
            metrics.run_time.labels(status=new).observe(ran)
