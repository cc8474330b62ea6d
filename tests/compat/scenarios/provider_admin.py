"""Provider, step 3 (the provider admin): provider_jobs, provider_logs with private lines, provider files."""

# ruff: noqa: T201
from __future__ import annotations

import os
from pathlib import Path

from common import check, check_equal, connect, expect_error, step

admin = connect()
job_id = os.environ["USER_JOB_ID"]
plain = admin.function("acme/plain")

step("provider_jobs(function) lists the user's job")
jobs = admin.provider_jobs(plain)
print("    provider jobs:", [j.job_id for j in jobs])
check(job_id in [j.job_id for j in jobs], "provider_jobs() should list the user's job")
check_equal(len(admin.provider_jobs(plain, limit=1)), 1, "provider_jobs(limit=1)")
check_equal([j.job_id for j in admin.provider_jobs(plain, status="ERROR")], [], "provider_jobs(status='ERROR')")

step("provider_logs(id) holds every line, the private ones included")
logs = admin.provider_logs(job_id)
print("    provider logs:\n" + logs)
check("private-marker" in logs, "[PRIVATE] lines reach the provider")
check("public-marker" in logs and "plain-marker" in logs, "the provider sees the other lines too")

step("provider files: list, download, delete")
provider_files = admin.provider_files(plain)
check_equal(provider_files, ["provider-secret.txt"], "provider_files() (the user's own files are not there)")
name = admin.provider_file_download("provider-secret.txt", plain, target_name="got.txt")
check_equal(Path(name).read_text(), "only for acme admins\n", "provider file content")
message = admin.provider_file_delete("provider-secret.txt", plain)
print("    delete answered:", message)
check("provider-secret.txt" not in admin.provider_files(plain), "provider file still listed after delete")
expect_error(lambda: admin.provider_file_delete("../x", plain), "400")
print("provider admin: OK")
