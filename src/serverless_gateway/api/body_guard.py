"""The one home of request body limits: authenticate first, then count body bytes as they arrive, per route."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import Principal, authenticate_request
from ..config import Settings
from ..errors import DATABASE_UNAVAILABLE, Unauthorized, error_body, is_database_outage
from ..state import GatewayState

logger = logging.getLogger(__name__)

PRINCIPAL_KEY = "gateway_principal"
"""Where the middleware leaves the principal it authenticated, in the ASGI scope's `state`."""

FORM_OVERHEAD_BYTES = 1024 * 1024
"""Room for the other form fields and the multipart framing beside an uploaded file."""

ESCAPING_OVERHEAD_BYTES = 64 * 1024
"""Room for the other fields of a body whose main field may be escaped JSON (twice its size at worst)."""

_PUBLIC = re.compile(r"^/api/v1/(version|readiness|liveness)/?$")
_API = re.compile(r"^/api/v1(/|$)")
# A job's launcher authenticates with its one-time bootstrap code, which the endpoint itself checks.
_OWN_AUTH = re.compile(r"^/api/v1/jobs/[^/]+/bootstrap/?$")


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """How many body bytes a route accepts, and the words that name that limit in a 413."""

    max_bytes: int
    what: str


def body_limit(method: str, path: str, settings: Settings) -> BodyLimit:
    """The cap of the body of `method path`: uploads and arguments have their own settings, the rest is small."""
    path = path.rstrip("/")
    if method == "POST":
        if path == "/api/v1/programs/upload":
            limit = settings.max_artifact_bytes
            return BodyLimit(limit + FORM_OVERHEAD_BYTES, f"an artifact of at most {limit} bytes")
        if path in ("/api/v1/files/upload", "/api/v1/files/provider/upload"):
            limit = settings.max_upload_bytes
            return BodyLimit(limit + FORM_OVERHEAD_BYTES, f"a file of at most {limit} bytes")
        if path in ("/api/v1/programs/run", "/api/v1/programs/validate_arguments"):
            limit = settings.max_arguments_bytes
            return BodyLimit(2 * limit + ESCAPING_OVERHEAD_BYTES, f"arguments of at most {limit} bytes")
        if path.startswith("/api/v1/jobs/") and path.endswith("/result"):
            limit = settings.max_result_bytes
            return BodyLimit(2 * limit + ESCAPING_OVERHEAD_BYTES, f"a result of at most {limit} bytes")
    return BodyLimit(settings.max_body_bytes, f"at most {settings.max_body_bytes} bytes")


def too_large_message(limit: BodyLimit) -> str:
    return f"The request body is larger than the limit of this endpoint: {limit.what} (a body of {limit.max_bytes})."


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once the count passes the cap; FastAPI lets it through body parsing unchanged."""

    def __init__(self, message: str):
        super().__init__(413, message)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return _header(scope, b"transfer-encoding") is not None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _refuse(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer without reading the body.

    No `Connection: close`: closing a socket with unread data makes the kernel reset the connection, and the
    client loses the answer. The server reads what is left and drops it, holding none of it.
    """
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw.extend((key.lower().encode(), value.encode()) for key, value in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """Pure ASGI middleware: a request with a body is authenticated before any of it is read, then counted."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        state: GatewayState = scope["app"].state.gateway
        path = scope["path"]
        if _API.match(path) and not _PUBLIC.match(path) and not _OWN_AUTH.match(path):
            principal = await self._authenticate(scope, send, state)
            if principal is None:
                return
            scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        limit = body_limit(scope["method"], scope["path"], state.settings)
        message = too_large_message(limit)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit.max_bytes:
            await _refuse(send, 413, message)
            return
        await self._counted(scope, receive, send, limit.max_bytes, message)

    async def _authenticate(self, scope: Scope, send: Send, state: GatewayState) -> Principal | None:
        """The caller, or None once a 401 (or a 503 when the database is down) has been sent."""
        token = _bearer(scope)
        try:
            if token is None:
                raise Unauthorized()
            return await authenticate_request(state.read_sessions, token, state.token_cache)
        except Unauthorized as exc:
            await _refuse(send, exc.status_code, exc.message, exc.headers)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            logger.warning("database unavailable while checking a token: %s", type(exc).__name__)
            await _refuse(send, 503, DATABASE_UNAVAILABLE)
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send, max_bytes: int, message: str) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            chunk = await receive()
            if chunk["type"] == "http.request":
                received += len(chunk.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(message)
            return chunk

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as exc:  # raised where no handler renders it (a background read, say)
            if started:
                raise
            await _refuse(send, 413, exc.detail)
