"""The OpenAPI document: our error envelope instead of FastAPI's 422 shape, and the bearer scheme."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..errors import ErrorBody

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_PUBLIC_PATHS = ("/api/v1/version/", "/api/v1/readiness/", "/api/v1/liveness/")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` with a generator that documents what the gateway really answers."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}"))
        for name, sub in (
            ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items()
        ):
            schemas.setdefault(name, sub)
        schemas["ErrorBody"].pop("$defs", None)
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                had_validation = responses.pop("422", None) is not None
                if had_validation or operation.get("parameters") or operation.get("requestBody"):
                    responses.setdefault("400", _error("Bad input"))
                if path not in _PUBLIC_PATHS and path.startswith("/api/v1/"):
                    responses.setdefault("401", _error("Missing or invalid bearer token"))
                else:
                    operation.pop("security", None)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
