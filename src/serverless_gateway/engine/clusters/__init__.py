"""Where each tenant's jobs run: one Ray cluster per tenant (sandboxed local heads, or operators' clusters).

A tenant is a job's author for their own functions and the pair (author, provider) for a provider's function,
so a consumer's jobs never share a cluster with a provider's code, nor two consumers of one provider.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tenant:
    user_id: uuid.UUID
    provider_id: uuid.UUID | None = None

    @property
    def key(self) -> str:
        base = f"user:{self.user_id}"
        return base if self.provider_id is None else f"{base}/provider:{self.provider_id}"


class ClusterWait(Exception):
    """No cluster can take this tenant's job now (all busy at the cap): it stays QUEUED with this message."""


class ClusterFailed(Exception):
    """The tenant's cluster could not be started; the message says why and how to fix it."""

    def __init__(self, message: str, *, deterministic: bool):
        super().__init__(message)
        self.deterministic = deterministic


class ClusterGone(Exception):
    """The cluster a job was handed to no longer exists (stopped, or its head died)."""


from ...repositories.engine import STARTING_MESSAGE as STARTING_MESSAGE  # noqa: E402
