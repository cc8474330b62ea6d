"""The run-throughput baseline: a bare FastAPI endpoint doing a run's statements in raw asyncpg.

`python -m bench.run_bare --port P` serves `POST /run/` under uvicorn with the gateway's loop and HTTP protocol
(uvloop, httptools; no access log) on BENCH_DATABASE_URL. Per request, as the gateway does for a user's own
program: the token's SHA-256 looked up once and then remembered, then in one transaction the program look-up
taking the per-user advisory lock, and the bounded active-job count + INSERT + NOTIFY in one statement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serverless_gateway.repositories.programs import JOBS_CHANNEL

LOCK_NAMESPACE = 0x5E4E
ACTIVE = ["PENDING", "QUEUED", "RUNNING"]

FIND_PROGRAM = """
SELECT id, disabled, disabled_reason, arguments_schema, pg_advisory_xact_lock($1::int, hashtext($2::uuid::text))
FROM program WHERE provider_id IS NULL AND author_id = $2 AND title = $3
"""
QUEUE_JOB = """
WITH queued AS (
    INSERT INTO job (id, program_id, author_id, status, arguments, config)
    SELECT $1, $2, $3, 'QUEUED', $4, $5::jsonb
    WHERE (SELECT count(*) FROM (
        SELECT id FROM job WHERE author_id = $3 AND status = ANY($6::text[]) LIMIT $7
    ) AS active) < $7
    RETURNING id
)
SELECT id, pg_notify($8, id::text) FROM queued
"""
USER_OF_TOKEN = "SELECT user_id FROM api_token WHERE token_hash = $1"


class RunBody(BaseModel):
    title: str
    provider: str | None = None
    arguments: dict[str, Any] | str | None = None
    config: dict[str, Any] | None = None


def make_app(url: str, *, pool_size: int, limit: int) -> FastAPI:
    """The bare app: one asyncpg pool of `pool_size` (the gateway's default), `limit` active jobs per user."""
    users: dict[str, uuid.UUID] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with asyncpg.create_pool(
            url, min_size=pool_size, max_size=pool_size, server_settings={"jit": "off"}
        ) as pool:
            app.state.pool = pool
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/liveness/")
    async def liveness() -> dict[str, str]:
        return {"status": "alive"}

    @app.post("/run/", response_model=None)
    async def run(request: Request, body: RunBody) -> dict[str, str] | JSONResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        digest = hashlib.sha256(token.encode()).hexdigest()
        pool: asyncpg.Pool = request.app.state.pool
        user_id = users.get(digest)
        if user_id is None:
            user_id = await pool.fetchval(USER_OF_TOKEN, digest)
            if user_id is None:
                return JSONResponse({"message": "Invalid token."}, status_code=401)
            users[digest] = user_id
        arguments = body.arguments if isinstance(body.arguments, str) else json.dumps(body.arguments or {})
        config = json.dumps(body.config or {})
        job_id = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            program = await conn.fetchrow(FIND_PROGRAM, LOCK_NAMESPACE, user_id, body.title)
            if program is None:
                return JSONResponse({"message": "Program not found."}, status_code=404)
            queued = await conn.fetchrow(
                QUEUE_JOB, job_id, program["id"], user_id, arguments, config, ACTIVE, limit, JOBS_CHANNEL
            )
        if queued is None:
            return JSONResponse({"message": "Too many active jobs."}, status_code=429)
        return {"id": str(job_id), "status": "QUEUED"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--limit", type=int, default=100, help="active jobs per user")
    args = parser.parse_args(argv)
    app = make_app(os.environ["BENCH_DATABASE_URL"], pool_size=args.pool_size, limit=args.limit)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
