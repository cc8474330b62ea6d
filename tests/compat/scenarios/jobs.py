"""Jobs of a plain-Python function: run, status, result, logs, filters, runtime jobs, failures, isolation."""

# ruff: noqa: T201
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from common import check, check_equal, check_status, connect, expect_error, stage, step, wait_terminal
from qiskit_serverless import Configuration, QiskitFunction

client = connect()

step("upload a plain-Python function (no qiskit_serverless inside) and a second one")
echo = client.upload(
    QiskitFunction(title="echo", entrypoint="main.py", working_dir=stage("plain"), env_vars={"GREETING": "hi"})
)
other_fn = client.upload(QiskitFunction(title="echo-other", entrypoint="main.py", working_dir=stage("plain")))

step("client.run(title, arguments): the job answers QUEUED, then runs to DONE")
arguments = {"mode": "echo", "x": 1, "nested": {"a": [1, 2.5, None, "s"]}, "text": "héllo"}
job = client.run("echo", arguments=arguments)
print("    job:", job.job_id, job.raw_data)
check(isinstance(job.job_id, str) and uuid.UUID(job.job_id), f"run should give a job id, got {job.job_id!r}")
first = job.status()
check_status(first)
check(first in {"QUEUED", "INITIALIZING", "RUNNING", "DONE"}, f"unexpected first status {first!r}")

step("start the other jobs now, so they run while the first one is checked")
fetched = client.function("echo")
job2 = fetched.run(mode="runtime", config=Configuration(workers=1))
job3 = echo.run(mode="legacy")
crash = echo.run(mode="crash")
bad = echo.run(mode="badjson")
silent = echo.run(mode="silent")

seen = wait_terminal(job)
check_equal(seen[-1], "DONE", f"final status (seen {seen})")

step("result(): the object the job wrote to RESULTS_PATH")
result = job.result()
print("    result:", result)
check_equal(result["arguments"], arguments, "arguments read from ARGUMENTS_PATH")
check_equal(result["env_arguments"], arguments, "legacy ENV_JOB_ARGUMENTS")
check_equal(result["greeting"], "hi", "env_vars reach the job")
check_equal(result["job_id"], job.job_id, "ENV_JOB_ID_GATEWAY")
check(result["data_path_set"], "DATA_PATH is set")
check_equal(result["shout"], "HI!", "a module of the working dir imported by the entrypoint")

step("logs() holds what the job printed")
logs = job.logs()
check("echo-marker mode=echo" in logs and "echo-done" in logs, f"logs lack the job's output: {logs!r}")

step("job(id) and the job's raw data")
again = client.job(job.job_id)
check(again is not None, "job(id) returned None")
check_equal(again.job_id, job.job_id, "job(id).job_id")
check_equal(again.status(), "DONE", "job(id).status()")
check_equal(again.result(), result, "job(id).result()")
check_equal(client.status(job.job_id), "SUCCEEDED", "client.status(id) (the raw status)")

step("function.run(**arguments) with a config; result(wait) polls until the end")
result2 = job2.result(wait=True, cadence=0.5)
check_equal(job2.status(), "DONE", "status after result()")
check_equal(result2["arguments"], {"mode": "runtime"}, "function.run arguments")
posts = result2["runtime_posts"]
check(set(posts) == {"first", "second"} and all(c in (200, 201) for c in posts.values()), f"runtime POSTs: {posts}")

step("runtime_jobs / runtime_sessions report what the job posted")
check_equal(sorted(client.runtime_jobs(job2.job_id)), ["rt-1", "rt-2"], "runtime_jobs(id)")
check_equal(job2.runtime_jobs(runtime_session="sess-1"), ["rt-1"], "runtime_jobs(session)")
check_equal(job2.runtime_sessions(), ["sess-1"], "runtime_sessions()")
check_equal(job.runtime_jobs(), [], "runtime_jobs of a job that posted none")

step("the legacy result POST from inside the job")
check_equal(wait_terminal(job3)[-1], "DONE", "legacy job status")
check_equal(job3.result(), {"legacy": True, "arguments": {"mode": "legacy"}}, "legacy result")

step("a failing entrypoint ends ERROR; result() raises with the traceback's error line")
check_equal(wait_terminal(crash)[-1], "ERROR", "crash status")
expect_error(crash.result, "boom-marker")
check("boom-marker" in crash.logs(), "the traceback is in the logs")
check_equal(crash.events(type="ERROR"), [], "no error events were sent")

step("a result that is not JSON fails the job")
check_equal(wait_terminal(bad)[-1], "ERROR", "status of a job whose result is not JSON")

step("a job that saves no result: DONE, and result() is {}")
check_equal(wait_terminal(silent)[-1], "DONE", "status of the job that saved nothing")
check_equal(silent.result(), {}, "result() of a job that saved nothing")

step("big arguments (300 kB) reach the job through ARGUMENTS_PATH")
big = echo.run(mode="echo", big="x" * 300_000)
check_equal(wait_terminal(big)[-1], "DONE", "status of the job with big arguments")
check_equal(big.result()["big_length"], 300_000, "length of the big argument seen by the job")

step("stop() of a finished job answers with a message and changes nothing")
message = client.stop(job.job_id, service="local")
print("    stop message:", message)
check(isinstance(message, str) and message, f"stop should answer a message, got {message!r}")
check_equal(job.status(), "DONE", "status after stopping a finished job")

step("jobs(...) with each filter")
created_after = datetime.now(UTC).isoformat()
time.sleep(0.2)
late = other_fn.run(mode="echo")
wait_terminal(late)
all_ids = [j.job_id for j in client.jobs(limit=20)]
print("    jobs:", all_ids)
expected = [late.job_id, big.job_id, silent.job_id, bad.job_id, crash.job_id, job3.job_id, job2.job_id, job.job_id]
check_equal(all_ids, expected, "jobs() newest first")
check_equal([j.job_id for j in client.jobs()], expected, "jobs() default limit")
check_equal([j.job_id for j in client.jobs(limit=2)], expected[:2], "jobs(limit=2)")
check_equal([j.job_id for j in client.jobs(limit=2, offset=2)], expected[2:4], "jobs(limit=2, offset=2)")
check_equal([j.job_id for j in client.jobs(offset=5)], expected[5:], "jobs(offset=5)")
check_equal(
    {j.job_id for j in client.jobs(status="DONE")},
    {late.job_id, big.job_id, silent.job_id, job3.job_id, job2.job_id, job.job_id},
    "jobs(status='DONE')",
)
check_equal({j.job_id for j in client.jobs(status="ERROR")}, {crash.job_id, bad.job_id}, "jobs(status='ERROR')")
check_equal(
    {j.job_id for j in client.jobs(status="SUCCEEDED")},
    {late.job_id, big.job_id, silent.job_id, job3.job_id, job2.job_id, job.job_id},
    "jobs(status='SUCCEEDED')",
)
check_equal([j.job_id for j in client.jobs(created_after=created_after)], [late.job_id], "jobs(created_after)")
check_equal([j.job_id for j in client.jobs(function=other_fn)], [late.job_id], "jobs(function=...)")
check_equal([j.job_id for j in other_fn.jobs()], [late.job_id], "function.jobs()")
check_equal(len(echo.jobs(limit=20)), 7, "jobs of 'echo'")
check_equal(client.jobs(provider="acme"), [], "jobs(provider='acme') of a user with no provider jobs")
listed = client.jobs(limit=1)[0]
check_equal(listed.status(), "DONE", "status() of a listed job")

step("another user cannot see, read or stop these jobs")
other = connect("GATEWAY_OTHER_TOKEN")
check(job.job_id not in [j.job_id for j in other.jobs(limit=50)], "another user lists this user's job")
expect_error(lambda: other.job(job.job_id), "404")
expect_error(lambda: other.result(job.job_id), "404")
expect_error(lambda: other.logs(job.job_id), "404")
expect_error(lambda: other.stop(job.job_id, service="local"), "404")
expect_error(lambda: client.job(str(uuid.uuid4())), "404")
expect_error(lambda: client.job("not-a-uuid"), "404")

print("jobs scenario: OK")
