"""Settings: bad values name their variable in one line; URLs are normalised; the README lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serverless_gateway.config import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_PAGE_SIZE", "abc"),
        ("MAX_PAGE_SIZE", "0"),
        ("MAX_PAGE_SIZE", "20000"),
        ("MAX_UPLOAD_BYTES", "-5"),
        ("MAX_ACTIVE_JOBS_PER_USER", "1.5"),
        ("DATABASE_URL", "mysql://root@localhost/db"),
        ("STORAGE_URL", "ftp://example/files"),
        ("RAY_ADDRESS", "127.0.0.1:8265"),
        ("PUBLIC_URL", "gateway.example"),
        ("RUN_ENGINE", "maybe"),
        ("DEPENDENCY_ALLOWLIST", "not json"),
        ("SYNC_INTERVAL_SECONDS", "-1"),
        ("TOKEN_CACHE_SECONDS", "soon"),
    ],
)
def test_a_bad_value_names_its_variable_in_one_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"GATEWAY_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"invalid setting GATEWAY_{name}: ")
    assert "\n" not in message


def test_defaults_need_no_environment() -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.ray_address is None
    assert settings.public_url is None
    assert settings.data_dir == Path(".gateway")
    assert settings.resolved_storage_url == f"file://{(Path('.gateway') / 'storage').resolve()}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/gw", "postgresql+asyncpg://u:p@db:5432/gw"),
        ("postgresql://u@db/gw", "postgresql+asyncpg://u@db/gw"),
        ("postgresql+asyncpg://u@db/gw", "postgresql+asyncpg://u@db/gw"),
        ("", None),
    ],
)
def test_database_urls_are_normalised_to_asyncpg(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str | None
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", given)
    assert load_settings().database_url == expected


def test_http_urls_lose_their_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RAY_ADDRESS", "http://ray-head:8265/")
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "https://gateway.example/")
    settings = load_settings()
    assert settings.ray_address == "http://ray-head:8265"
    assert settings.public_url == "https://gateway.example"


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_MAX_PAGE_SIZE", "25")
    monkeypatch.setenv("GATEWAY_RUN_ENGINE", "false")
    monkeypatch.setenv("GATEWAY_DEPENDENCY_ALLOWLIST", '["numpy", "scipy"]')
    monkeypatch.setenv("GATEWAY_STORAGE_URL", "s3://bucket/prefix")
    settings = load_settings()
    assert settings.data_dir == tmp_path
    assert settings.max_page_size == 25
    assert settings.run_engine is False
    assert settings.dependency_allowlist == ["numpy", "scipy"]
    assert settings.resolved_storage_url == "s3://bucket/prefix"


def _readme_settings() -> set[str]:
    """The `GATEWAY_*` names in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", text, flags=re.MULTILINE))


def test_the_readme_configuration_table_lists_every_setting() -> None:
    expected = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    listed = _readme_settings()
    assert not expected - listed, f"missing from the README's configuration table: {sorted(expected - listed)}"
    assert not listed - expected, f"in the README's table but not a setting: {sorted(listed - expected)}"
