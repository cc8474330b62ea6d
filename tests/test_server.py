"""`serve`'s dev token: on a terminal it is shown once, elsewhere it goes to a file only its owner reads."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from serverless_gateway import server


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    server.announce_dev_token("gw_secret", tmp_path)
    assert "gw_secret" in terminal.getvalue()
    assert not (tmp_path / server.DEV_TOKEN_FILE).exists()


def test_logs_get_only_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)
    stale = tmp_path / "data" / server.DEV_TOKEN_FILE
    stale.parent.mkdir()
    stale.write_text("old")
    stale.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        server.announce_dev_token("gw_secret", tmp_path / "data")
    assert piped.getvalue() == ""
    assert "gw_secret" not in caplog.text
    assert str(stale.resolve()) in caplog.text
    assert stale.read_text() == "gw_secret\n"
    assert stale.stat().st_mode & 0o777 == 0o600
