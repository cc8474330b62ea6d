"""A pure ASGI middleware: a request id for every request, one log line and the HTTP metrics per answer."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics as metrics_module
from .log_config import log_context
from .metrics import GatewayMetrics

logger = logging.getLogger("serverless_gateway.request")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"
QUIET_ROUTES = frozenset({"/liveness", "/readiness", "/api/v1/liveness", "/api/v1/readiness", "/metrics"})
"""Polled every few seconds by probes and scrapers: their lines are DEBUG, not INFO."""


def request_id_from(scope: Scope) -> str:
    """The caller's `X-Request-ID` when it is short and plain, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = str(value.decode("latin-1"))
            if _SAFE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/jobs/{job_id}`), never the raw path; slash twins agree.

    The route knows its template without the prefix of the router that included it: that prefix is the part of
    the request path in front of the route's own (rendered) path.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED_ROUTE
    params = scope.get("path_params") or {}
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    try:
        rendered = template.format(**{name: str(value) for name, value in params.items()})
    except (KeyError, IndexError, ValueError):
        rendered = None
    if rendered and path.endswith(rendered):
        template = path[: len(path) - len(rendered)] + template
    return template.rstrip("/") or "/"


class TelemetryMiddleware:
    """Times each HTTP request, tags its log lines with the request id, logs one line and records metrics."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        status = 500
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with metrics_module.use(self.metrics), log_context(request_id=request_id) as fields:
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._finish(scope, status, time.perf_counter() - started, fields)

    def _finish(self, scope: Scope, status: int, elapsed: float, fields: dict[str, str]) -> None:
        method = str(scope.get("method", ""))
        route = route_template(scope)
        self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
        self.metrics.http_duration.labels(method=method, route=route).observe(elapsed)
        level = logging.DEBUG if route in QUIET_ROUTES and status < 500 else logging.INFO
        extra: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 1),
        }
        if "user_id" in fields:
            extra["user_id"] = fields["user_id"]
        logger.log(level, "%s %s %d %.1fms", method, route, status, extra["duration_ms"], extra=extra)
