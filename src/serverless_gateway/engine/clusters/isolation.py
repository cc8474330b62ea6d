"""Whether tenants get sandboxed heads of their own here (`GATEWAY_ISOLATION`), decided once at start-up."""

from __future__ import annotations

import functools
from typing import Literal

from ...config import Settings
from .sandbox import sandbox_problem

NOT_ISOLATED = (
    "USERS ARE NOT ISOLATED: every user's jobs share one Ray head and can read each other's processes, files and "
    "arguments"
)


class IsolationUnavailable(RuntimeError):
    """GATEWAY_ISOLATION=required, and the sandbox cannot work here."""


@functools.cache
def _problem() -> str | None:
    return sandbox_problem()


def isolation_mode(settings: Settings) -> tuple[Literal["local", "shared"], str | None]:
    """("local", None) for sandboxed tenant heads; ("shared", why) for one shared head."""
    if settings.isolation == "shared":
        return "shared", "GATEWAY_ISOLATION=shared"
    problem = _problem()
    if problem is None:
        return "local", None
    if settings.isolation == "required":
        raise IsolationUnavailable(
            f"GATEWAY_ISOLATION=required but {problem}; install bubblewrap or set GATEWAY_ISOLATION=shared"
        )
    return "shared", problem
