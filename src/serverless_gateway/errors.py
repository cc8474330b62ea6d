"""Errors as classes with a status code, and the handlers that render the one JSON envelope."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics
from .storage.base import InvalidKey, ObjectNotFound, ObjectTooLarge, StorageError

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    message: str
    errors: list[ErrorDetail] | None = None


class GatewayError(Exception):
    """An error a person can act on; `status_code` picks the HTTP answer."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers


class BadRequest(GatewayError):
    status_code = 400


class Unauthorized(GatewayError):
    status_code = 401

    def __init__(self, message: str = "Authentication credentials were not provided or are invalid."):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(GatewayError):
    status_code = 403


class NotFound(GatewayError):
    status_code = 404


class Conflict(GatewayError):
    status_code = 409


class PayloadTooLarge(GatewayError):
    status_code = 413


class Locked(GatewayError):
    status_code = 423


class TooManyRequests(GatewayError):
    status_code = 429


class ServiceUnavailable(GatewayError):
    status_code = 503


class ValidationFailed(GatewayError):
    """Bad input with a list of the fields at fault."""

    status_code = 400

    def __init__(self, message: str, errors: Sequence[ErrorDetail]):
        super().__init__(message)
        self.errors = list(errors)


_DESCRIPTIONS = {
    400: "Bad input",
    401: "Missing or invalid bearer token",
    403: "Not allowed",
    404: "Not found, or not yours",
    409: "Conflict",
    413: "Too large",
    422: "Invalid request",
    423: "The program is disabled",
    429: "Limit reached",
    503: "A dependency is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting the error envelope for each code."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS.get(code, "Error")} for code in codes}


def _envelope(status_code: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


def _validation_details(errors: Sequence[Any]) -> list[ErrorDetail]:
    details = []
    for err in errors:
        loc = [part if isinstance(part, int) else str(part) for part in err.get("loc", ())]
        details.append(ErrorDetail(loc=loc, msg=str(err.get("msg", "invalid value"))))
    return details


def _summary(details: Sequence[ErrorDetail]) -> str:
    parts = []
    for detail in details[:5]:
        where = ".".join(str(p) for p in detail.loc if p not in ("body", "query", "path", "header"))
        parts.append(f"{where}: {detail.msg}" if where else detail.msg)
    return "Invalid request: " + "; ".join(parts) if parts else "Invalid request."


def _storage_answer(exc: StorageError) -> tuple[int, str]:
    """Storage failures that reach the API: the caller's fault is 4xx, the backend's is 503."""
    if isinstance(exc, ObjectNotFound):
        return 404, "Not found."
    if isinstance(exc, ObjectTooLarge):
        return 413, f"Too large: {exc}"
    if isinstance(exc, InvalidKey):
        return 400, f"Invalid name: {exc}"
    return 503, "Storage is unavailable right now; try again later."


_OUTAGE_SQLSTATES = frozenset(
    {"57014", "57P01", "57P02", "57P03", "53300", "08000", "08001", "08003", "08004", "08006"}
)
"""Statement cancelled (timeout), server shutting down, too many connections, connection failures."""

DATABASE_UNAVAILABLE = "The database is unavailable right now; try again later."


def is_database_outage(exc: BaseException) -> bool:
    """Timeouts and lost connections of the database: the dependency's fault (503), not a bug."""
    if isinstance(exc, (sa_exc.TimeoutError, TimeoutError, ConnectionError)):
        return True
    # The run path speaks asyncpg directly (db.driver_scope): its errors arrive unwrapped.
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in _OUTAGE_SQLSTATES
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        return getattr(exc.orig, "sqlstate", None) in _OUTAGE_SQLSTATES
    return False


def error_body(message: str) -> bytes:
    """The envelope as bytes, for answers sent below the framework (the ASGI middleware)."""
    return ErrorBody(message=message).model_dump_json(exclude_none=True).encode()


database_unavailable = is_database_outage


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, ours or the framework's, as `{"message", "errors"?}`."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        errors = exc.errors if isinstance(exc, ValidationFailed) else None
        return _envelope(exc.status_code, ErrorBody(message=exc.message, errors=errors), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc.errors())
        return _envelope(400, ErrorBody(message=_summary(details), errors=details))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Error."
        if exc.status_code == 404 and message == "Not Found":
            message = "Not found."
        return _envelope(exc.status_code, ErrorBody(message=message), getattr(exc, "headers", None))

    @app.exception_handler(StorageError)
    async def _storage_error(_: Request, exc: StorageError) -> JSONResponse:
        status, message = _storage_answer(exc)
        if status >= 500:
            metrics.record_storage_error("api")
            logger.warning("storage error: %s", exc)
        return _envelope(status, ErrorBody(message=message))

    async def _database_error(_: Request, exc: Exception) -> JSONResponse:
        if not is_database_outage(exc):
            # The driver's message may quote a bound value (an argument, a token): log the kind, statement and frames.
            frames = "".join(traceback.format_tb(exc.__traceback__))
            statement = getattr(exc, "statement", None)
            logger.error("unhandled database error %s in %r\n%s", type(exc).__name__, statement, frames)
            return _envelope(500, ErrorBody(message="Internal server error."))
        cause = getattr(getattr(exc, "orig", None), "__cause__", None)
        logger.warning("database unavailable: %s%s", type(exc).__name__, f" ({type(cause).__name__})" if cause else "")
        return _envelope(503, ErrorBody(message=DATABASE_UNAVAILABLE))

    database_errors = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    for kind in (sa_exc.SQLAlchemyError, TimeoutError, ConnectionError, *database_errors):
        app.add_exception_handler(kind, _database_error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return _envelope(500, ErrorBody(message="Internal server error."))
