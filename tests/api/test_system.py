"""Version, probes, docs and the error envelope for unknown routes."""

from __future__ import annotations

import pytest
from httpx import AsyncClient

from serverless_gateway import __version__


@pytest.mark.parametrize("prefix", ["/api/v1", ""])
@pytest.mark.parametrize("slash", ["/", ""])
async def test_probes_answer_without_auth(client: AsyncClient, prefix: str, slash: str) -> None:
    version = await client.get(f"{prefix}/version{slash}")
    assert version.status_code == 200
    assert version.json() == {"version": __version__}
    assert (await client.get(f"{prefix}/liveness{slash}")).status_code == 200
    ready = await client.get(f"{prefix}/readiness{slash}")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


async def test_unknown_route_uses_envelope(client: AsyncClient) -> None:
    response = await client.get("/api/v1/nope/")
    assert response.status_code == 404
    assert response.json() == {"message": "Not found."}


async def test_docs_are_served_offline(client: AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    asset = await client.get("/docs-assets/swagger-ui-bundle.js")
    assert asset.status_code == 200
    redoc = await client.get("/redoc")
    assert redoc.status_code == 200
    assert "/docs-assets/redoc.standalone.js" in redoc.text
    assert "fonts.googleapis" not in redoc.text


async def test_openapi_documents_errors_and_security(client: AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "ErrorBody" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for operation in item.values():
            assert "422" not in operation["responses"], path


async def test_dependencies_versions_needs_auth_and_lists_allowlist(client: AsyncClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    assert (await client.get("/api/v1/dependencies-versions/")).status_code == 401
    for path in ("/api/v1/dependencies-versions/", "/api/v1/dependencies-versions"):
        response = await client.get(path, headers=user.headers)
        assert response.status_code == 200
        assert response.json() == []


async def test_storage_errors_reaching_the_api_use_the_envelope(app, client: AsyncClient) -> None:  # type: ignore[no-untyped-def]
    from serverless_gateway.storage.base import InvalidKey, StorageError, StorageUnavailable

    @app.get("/_test/storage-error/{kind}")
    async def boom(kind: str) -> None:
        raise {"bad": InvalidKey("x/.."), "down": StorageUnavailable("gone"), "other": StorageError("odd")}[kind]

    try:
        assert (await client.get("/_test/storage-error/bad")).status_code == 400
        for kind in ("down", "other"):
            response = await client.get(f"/_test/storage-error/{kind}")
            assert response.status_code == 503
            assert "unavailable" in response.json()["message"]
    finally:
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/_test/storage-error/{kind}"]
