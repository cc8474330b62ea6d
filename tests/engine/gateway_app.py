"""The gateway as its own process (SIGKILL test): `python -m uvicorn --factory tests.engine.gateway_app:make_app`."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from serverless_gateway.app import create_app
from serverless_gateway.config import load_settings


def make_app() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return create_app(load_settings(), start_engine=True)
