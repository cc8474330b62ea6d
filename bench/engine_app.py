"""The gateway process of `engine_bench`: `python -m uvicorn --factory bench.engine_app:make_app`.

A module of its own so that the gateway process imports only the gateway: the bench's own imports (Ray's
client for the direct baseline, psutil, Alembic) would otherwise count in the gateway's measured memory.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from serverless_gateway.app import create_app
from serverless_gateway.config import load_settings


def make_app() -> FastAPI:
    if os.environ.get("BENCH_ENGINE_DEBUG"):
        logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("serverless_gateway.engine").setLevel(logging.DEBUG)
    return create_app(load_settings(), start_engine=True)
