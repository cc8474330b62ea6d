"""Version, probes, docs and the error envelope for unknown routes."""

from __future__ import annotations

import asyncio
import time

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


class HungEngine:
    """An engine whose Ray never answers."""

    isolation = "USERS ARE NOT ISOLATED (a test engine)"

    def wake(self) -> None: ...

    async def close(self) -> None: ...

    async def readiness_problem(self) -> str | None:
        await asyncio.sleep(3600)
        return None

    async def live_logs(self, job_id: object, submission_id: str) -> str | None:
        return None


class DownEngine(HungEngine):
    async def readiness_problem(self) -> str | None:
        return "ray unreachable: connection refused"


async def test_readiness_does_not_depend_on_ray(app, client: AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for engine in (HungEngine(), DownEngine()):
        monkeypatch.setattr(app.state.gateway, "engine", engine)
        began = time.monotonic()
        ready = await client.get("/api/v1/readiness/")
        assert ready.status_code == 200, ready.text
        assert time.monotonic() - began < 1


async def test_readiness_answers_within_a_second_when_storage_hangs(
    app, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    checks: list[str] = []

    async def slow_check() -> None:
        checks.append("storage")
        await asyncio.sleep(30)

    monkeypatch.setattr(app.state.gateway.storage, "check", slow_check)
    began = time.monotonic()
    ready = await client.get("/readiness/")
    elapsed = time.monotonic() - began
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["down"] == ["storage"]
    assert checks == ["storage"]
    assert elapsed < 1, elapsed


async def test_readiness_checks_run_concurrently(app, client: AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from serverless_gateway.services import health

    async def half_second_storage() -> None:
        await asyncio.sleep(0.5)

    original = health._database

    async def half_second_database(engine):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.5)
        return await original(engine)

    monkeypatch.setattr(app.state.gateway.storage, "check", half_second_storage)
    monkeypatch.setattr(health, "_database", half_second_database)
    began = time.monotonic()
    ready = await client.get("/readiness/")
    assert ready.status_code == 200, ready.text
    assert time.monotonic() - began < 0.9  # one after the other would take over a second


async def test_readiness_is_503_while_draining(app, client: AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(app.state, "draining", True)
    ready = await client.get("/api/v1/readiness/")
    assert ready.status_code == 503
    assert ready.json()["message"] == "shutting down"
    assert (await client.get("/api/v1/liveness/")).status_code == 200


async def test_status_reports_database_storage_and_ray_to_users_only(
    app, client: AsyncClient, make_user, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    assert (await client.get("/api/v1/status/")).status_code == 401
    answer = await client.get("/api/v1/status/", headers=user.headers)
    assert answer.status_code == 200
    assert answer.json()["database"] == {"status": "ok", "message": None}
    assert answer.json()["storage"]["status"] == "ok"
    assert answer.json()["engine"]["status"] == "not_running"
    monkeypatch.setattr(app.state.gateway, "engine", DownEngine())
    engine = (await client.get("/api/v1/status/", headers=user.headers)).json()["engine"]
    assert engine == {"status": "unavailable", "message": "ray unreachable: connection refused"}
    assert (await client.get("/api/v1/status/", headers=user.headers)).json()["isolation"] == DownEngine.isolation
    monkeypatch.setattr(app.state.gateway, "engine", HungEngine())
    began = time.monotonic()
    engine = (await client.get("/api/v1/status/", headers=user.headers)).json()["engine"]
    assert engine["status"] == "unavailable"
    assert "did not answer" in engine["message"]
    assert time.monotonic() - began < 2


async def test_every_request_body_has_an_example_that_its_schema_accepts(client: AsyncClient) -> None:
    import jsonschema

    document = (await client.get("/openapi.json")).json()
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody")
            if body is None:
                continue
            for media, content in body["content"].items():
                schema = content["schema"]
                resolved = schema
                if "$ref" in schema:
                    resolved = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
                if media == "multipart/form-data" and "file" in resolved.get("properties", {}):
                    continue  # a file upload: nothing to show
                examples = resolved.get("examples") or []
                if not examples and media == "multipart/form-data":  # a form: its fields show values instead
                    fields = resolved["properties"]
                    assert all("examples" in fields[name] for name in resolved.get("required", [])), path
                    examples = [{name: field["examples"][0] for name, field in fields.items() if "examples" in field}]
                assert examples, (path, method, media)
                for example in examples:
                    jsonschema.validate(example, {**schema, "components": document["components"]})
                    checked += 1
    assert checked >= 8


async def test_readiness_names_what_is_down_and_nothing_more(
    app, client: AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    from serverless_gateway.storage.base import StorageUnavailable

    async def down() -> None:
        raise StorageUnavailable("cannot write /srv/secret-storage-path: permission denied")

    monkeypatch.setattr(app.state.gateway.storage, "check", down)
    with caplog.at_level("WARNING"):
        response = await client.get("/api/v1/readiness/")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "message": "not ready", "down": ["storage"]}
    assert "/srv/secret-storage-path" in caplog.text
