"""Provider, step 2 (a user of a group granted run rights): find, run, read result and public logs only.

GATEWAY_OTHER_TOKEN belongs to a user whose group may only view acme/helpers.
"""

# ruff: noqa: T201
from __future__ import annotations

from pathlib import Path

import requests
from common import check, check_equal, connect, expect_error, step, wait_terminal, write_output
from qiskit_serverless import QiskitFunction, QiskitServerlessException

user = connect()

step("functions() lists the granted provider functions")
listed = {(f.provider, f.title): f for f in user.functions()}
print("    functions:", sorted(listed))
check(("acme", "plain") in listed, f"granted acme/plain missing from functions(): {sorted(listed)}")
catalog = {(f.provider, f.title) for f in user.functions(filter="catalog")}
check(("acme", "plain") in catalog, f"acme/plain missing from functions(filter='catalog'): {catalog}")
serverless = {(f.provider, f.title) for f in user.functions(filter="serverless")}
check(("acme", "plain") not in serverless, f"a provider function in functions(filter='serverless'): {serverless}")

step("function('acme/plain').run(**arguments): result and public logs")
function = user.function("acme/plain")
check_equal((function.provider, function.title), ("acme", "plain"), "function('acme/plain')")
job = function.run(who="ursula")
check_equal(wait_terminal(job)[-1], "DONE", "status of the provider job")
check_equal(job.result(), {"ok": True, "who": "ursula"}, "result of the provider job")
logs = job.logs()
print("    user's logs:\n" + logs)
check("plain-marker" in logs, "untagged lines reach the user")
check("public-marker" in logs, "[PUBLIC] lines reach the user")
check("[PUBLIC]" not in logs, "the [PUBLIC] tag is stripped for the user")
check("private-marker" not in logs and "[PRIVATE]" not in logs, "[PRIVATE] lines must not reach the user")
check(job.job_id in [j.job_id for j in user.jobs(function=function)], "the user lists its provider job")
job_by_run = user.run("plain", arguments={"who": "again"}, provider="acme")
check_equal(wait_terminal(job_by_run)[-1], "DONE", "client.run(title, provider=...)")
job_by_path = user.run("acme/plain", arguments={"who": "by path"})
check_equal(wait_terminal(job_by_path)[-1], "DONE", "client.run('provider/title')")
check_equal(job_by_path.result(), {"ok": True, "who": "by path"}, "result of client.run('provider/title')")
check_equal(user.validate_arguments("acme/plain", {"who": "x"}).get("valid", True), True, "validate_arguments")

step("the user cannot read private logs, provider files or provider jobs")
expect_error(job.provider_logs)
expect_error(lambda: user.provider_files(function))
expect_error(
    lambda: user.provider_file_download("provider-secret.txt", function),
    errors=(requests.HTTPError, QiskitServerlessException),
)
expect_error(lambda: user.provider_file_delete("provider-secret.txt", function))
expect_error(lambda: user.provider_jobs(function))
own_files = user.files(function)
check("provider-secret.txt" not in own_files, f"the user's files() shows the provider's file: {own_files}")

step("the user keeps files of its own for the provider function")
Path("mine.txt").write_text("ursula's data\n")
user.file_upload("mine.txt", function)
check_equal(user.files(function), ["mine.txt"], "the user's files for acme/plain")

step("a user of a group with view rights only sees acme/helpers but cannot run it, and never sees acme/plain")
stranger = connect("GATEWAY_OTHER_TOKEN")
seen_by_stranger = {(f.provider, f.title) for f in stranger.functions()}
check(("acme", "helpers") in seen_by_stranger, f"the viewer should list acme/helpers: {seen_by_stranger}")
check(("acme", "plain") not in seen_by_stranger, "a user outside the granted groups lists acme/plain")
check_equal(stranger.function("acme/helpers").title, "helpers", "function('acme/helpers') for a viewer")
expect_error(lambda: stranger.function("acme/helpers").run(name="viewer"))
expect_error(lambda: stranger.function("acme/plain"), "404")
expect_error(lambda: stranger.run(QiskitFunction(title="acme/plain"), arguments={}), "404")
expect_error(lambda: stranger.job(job.job_id), "404")

write_output(job_id=job.job_id)
print("provider user: OK")
