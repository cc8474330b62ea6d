"""Stopping jobs: QUEUED and RUNNING jobs become CANCELED; the client's stop() needs a `service` locally.

The gateway under test runs with GATEWAY_MAX_RUNNING_JOBS_PER_USER=2, so this user's third job waits QUEUED.
"""

# ruff: noqa: T201
from __future__ import annotations

import time

from common import check, check_equal, connect, stage, step, wait_for_status, wait_terminal
from qiskit_serverless import QiskitFunction

client = connect()
sleeper = client.upload(QiskitFunction(title="sleeper", entrypoint="main.py", working_dir=stage("plain")))

step("two sleeping jobs fill this user's running slots")
first = sleeper.run(mode="sleep", seconds=300)
second = client.run("sleeper", arguments={"mode": "sleep", "seconds": 300})
seen_first = wait_for_status(first, {"RUNNING"}, timeout=120)
seen_second = wait_for_status(second, {"RUNNING"}, timeout=120)
print("    statuses seen:", seen_first, seen_second)

step("logs() of a RUNNING job are Ray's live logs")
deadline = time.monotonic() + 30
while "sleeping" not in first.logs():
    check(time.monotonic() < deadline, f"live logs never showed 'sleeping': {first.logs()!r}")
    time.sleep(1)

step("a third job stays QUEUED")
third = sleeper.run(mode="sleep", seconds=300)
for _ in range(6):
    check_equal(third.status(), "QUEUED", "status of a job over the per-user running cap")
    time.sleep(0.5)

step("known client limit: stop() without `service` builds a Qiskit Runtime service and fails locally")
try:
    client.stop(third.job_id)
    limit_text = "no error"
except TypeError as exc:
    limit_text = f"TypeError: {exc}"
print("    ", limit_text)
check(
    "not JSON serializable" in limit_text, f"stop() without service: expected the client's TypeError, got {limit_text}"
)
check_equal(third.status(), "QUEUED", "the failed client-side stop() sent nothing")

step("workaround: cancel(service=...) with any truthy JSON value; a QUEUED job is CANCELED at once")
message = third.cancel(service="local")
print("    cancel message:", message)
check(isinstance(message, str) and message, f"cancel should answer a message, got {message!r}")
check_equal(third.status(), "CANCELED", "status right after stopping a QUEUED job")

step("stopping RUNNING jobs: client.stop(id, service=...) and the deprecated job.stop(service=...)")
message = client.stop(first.job_id, service="local")
print("    stop message:", message)
check(isinstance(message, str) and message, f"stop should answer a message, got {message!r}")
check_equal(wait_terminal(first, timeout=60)[-1], "CANCELED", "status of the first stopped job")
second.stop(service=True)
check_equal(wait_terminal(second, timeout=60)[-1], "CANCELED", "status of the second stopped job")
check("sleeping" in first.logs(), "logs of a stopped job keep what it printed")

step("stopped jobs are listed with status CANCELED")
canceled = {j.job_id for j in client.jobs(status="CANCELED")}
check_equal(canceled, {first.job_id, second.job_id, third.job_id}, "jobs(status='CANCELED')")
check_equal(client.jobs(status="QUEUED"), [], "no QUEUED job left")
print("stop scenario: OK")
