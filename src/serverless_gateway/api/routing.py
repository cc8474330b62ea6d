"""A router that answers both `/path/` and `/path` directly, without redirects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


class SlashRouter(APIRouter):
    """Registers every route twice: the documented `/path/` and its undocumented twin `/path`."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        twin = path[:-1] if path.endswith("/") else path + "/"
        if (twin or self.prefix) and twin != path:  # "/" under a prefix: the twin is the bare prefix
            twin_kwargs = dict(kwargs)
            twin_kwargs["include_in_schema"] = False
            if twin_kwargs.get("operation_id"):
                twin_kwargs["operation_id"] = twin_kwargs["operation_id"] + "_twin"
            super().add_api_route(twin, endpoint, **twin_kwargs)
