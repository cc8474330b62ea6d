"""Log set-up (level, text or JSON lines, uvicorn's loggers included) and the context fields every line carries.

Context fields (request id, user id, job id, tenant) live in a context variable: the request middleware binds the
request's, `log_context` adds a job's for engine work, and a filter copies them onto each record.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("request_id", "user_id", "job_id", "tenant")
REQUEST_FIELDS = ("method", "route", "status", "duration_ms")
"""Extra fields of the one line logged per HTTP request."""

_context: ContextVar[dict[str, str] | None] = ContextVar("gateway_log_context", default=None)


def context_fields() -> dict[str, str]:
    """The context fields bound here (a copy)."""
    return dict(_context.get() or {})


@contextmanager
def log_context(**fields: object) -> Iterator[dict[str, str]]:
    """Lines logged inside the block (and in tasks started there) carry these fields, e.g. job_id and tenant.

    None values are left out; the yielded dict may be updated in the block (the middleware adds the user id).
    """
    merged = dict(_context.get() or {})
    merged.update({name: str(value) for name, value in fields.items() if value is not None})
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def bind(**fields: object) -> None:
    """Add fields to the innermost context (the request's, from a dependency), if there is one."""
    current = _context.get()
    if current is not None:
        current.update({name: str(value) for name, value in fields.items() if value is not None})


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (a record's own extra fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the context and request fields present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*CONTEXT_FIELDS, *REQUEST_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, followed by `key=value` for the context fields present."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None)]
        if not extras:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {' '.join(extras)}{sep}{tail}"


def make_handler(fmt: LogFormat, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) with the chosen format and the context filter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str, fmt: LogFormat, stream: Any = None) -> None:
    """Route the gateway's, uvicorn's and the libraries' lines through one handler at `level` (other libraries: WARNING
    at least, so a DEBUG gateway does not drown in their lines)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(fmt, stream))
    root.setLevel(max(numeric, logging.WARNING))
    for name in ("serverless_gateway", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        logger.handlers.clear()
        logger.propagate = True
    # Each request is logged once by the gateway's middleware (route template, no query string): not by uvicorn too.
    logging.getLogger("uvicorn.access").disabled = True
