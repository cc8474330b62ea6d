"""Endpoints under /api/v1/files/ (being built)."""

from __future__ import annotations

from .routing import SlashRouter

router = SlashRouter(prefix="/files", tags=["files"])
