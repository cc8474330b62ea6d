"""Endpoints under /api/v1/jobs/ (being built)."""

from __future__ import annotations

from .routing import SlashRouter

router = SlashRouter(prefix="/jobs", tags=["jobs"])
