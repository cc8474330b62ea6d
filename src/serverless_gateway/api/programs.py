"""Endpoints under /api/v1/programs/ (being built)."""

from __future__ import annotations

from .routing import SlashRouter

router = SlashRouter(prefix="/programs", tags=["programs"])
