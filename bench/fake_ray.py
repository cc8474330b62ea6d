"""A stand-in for Ray's job REST API whose jobs run forever (or succeed after a delay): lets the engine bench keep
500 jobs RUNNING, or put 1,000 jobs through the gateway without 1,000 Ray workers.

It answers the calls `JobSubmissionClient` makes (version, packages, submit, list, info, logs, stop, delete)
and counts the list calls, i.e. the engine's sync passes. 500 real Ray jobs would need ~1,000 processes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


class FakeRay:
    def __init__(self, *, succeed_after: float | None = None) -> None:
        """`succeed_after`: seconds after which a job reads SUCCEEDED (None: it runs forever)."""
        self.succeed_after = succeed_after
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/api/version", self.version),
                Route("/api/packages/{protocol}/{name}", self.package, methods=["GET", "PUT"]),
                Route("/api/jobs/", self.jobs_root, methods=["GET", "POST"]),
                Route("/api/jobs/{sid}", self.job, methods=["GET", "DELETE"]),
                Route("/api/jobs/{sid}/logs", self.logs),
                Route("/api/jobs/{sid}/stop", self.stop, methods=["POST"]),
            ]
        )
        self._server: uvicorn.Server | None = None

    def _aged(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job as it reads now: SUCCEEDED once `succeed_after` seconds have passed (unless stopped)."""
        if self.succeed_after is None or job["status"] != "RUNNING":
            return job
        if time.time() * 1000 - job["start_time"] < self.succeed_after * 1000:
            return job
        job.update(status="SUCCEEDED", message="done", end_time=int(time.time() * 1000), driver_exit_code=0)
        return job

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "4", "ray_version": "2.60.0", "ray_commit": "fake", "session_name": "fake"})

    async def package(self, request: Request) -> Response:
        return Response(status_code=200)

    async def jobs_root(self, request: Request) -> Response:
        if request.method == "GET":
            self.calls["list"] += 1
            with self._lock:
                return JSONResponse([self._aged(job) for job in self.jobs.values()])
        body = await request.json()
        sid = body["submission_id"]
        self.calls["submit"] += 1
        with self._lock:
            if sid in self.jobs:
                return PlainTextResponse(f"ValueError: Job with submission_id {sid} already exists.", 500)
            self.jobs[sid] = {
                "type": "SUBMISSION",
                "job_id": None,
                "submission_id": sid,
                "driver_info": None,
                "status": "RUNNING",
                "entrypoint": body["entrypoint"],
                "message": "running",
                "error_type": None,
                "start_time": int(time.time() * 1000),
                "end_time": None,
                "metadata": body.get("metadata") or {},
                "runtime_env": body.get("runtime_env") or {},
                "driver_agent_http_address": None,
                "driver_node_id": None,
                "driver_exit_code": None,
            }
        return JSONResponse({"submission_id": sid, "job_id": None})

    async def job(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        with self._lock:
            if sid not in self.jobs:
                return PlainTextResponse(f"Job {sid} does not exist.", 404)
            if request.method == "DELETE":
                del self.jobs[sid]
                return JSONResponse({"deleted": True})
            return JSONResponse(self._aged(self.jobs[sid]))

    async def logs(self, request: Request) -> Response:
        return JSONResponse({"logs": "fake logs\n"})

    async def stop(self, request: Request) -> Response:
        with self._lock:
            job = self.jobs.get(request.path_params["sid"])
            if job is None:
                return PlainTextResponse("Job does not exist.", 404)
            job["status"] = "STOPPED"
        return JSONResponse({"stopped": True})

    def start(self, port: int) -> str:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, daemon=True).start()
        while not self._server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
