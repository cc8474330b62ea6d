"""User files: upload, list, download, delete, bad names, the job's DATA_PATH, isolation between users."""

# ruff: noqa: T201
from __future__ import annotations

import os
from pathlib import Path

import requests
from common import check, check_equal, connect, expect_error, stage, step, wait_terminal
from qiskit_serverless import QiskitFunction, QiskitServerlessException

client = connect()
function = client.upload(QiskitFunction(title="files-fn", entrypoint="main.py", working_dir=stage("plain")))
content = "line one\nline two ünïcödé\n"
local = Path("data.txt")
local.write_text(content, encoding="utf-8")

step("file_upload / files")
answer = client.file_upload(str(local), function)
print("    upload answered:", answer)
check(isinstance(answer, str), f"file_upload should answer text, got {answer!r}")
listed = client.files(function)
print("    files:", listed)
check("data.txt" in listed, f"files() should list data.txt: {listed}")

step("file_download returns the same bytes")
downloads = Path("downloads")
downloads.mkdir()
name = client.file_download("data.txt", function, target_name="copy.txt", download_location=str(downloads))
check_equal(name, "copy.txt", "downloaded file name")
check_equal((downloads / "copy.txt").read_text(encoding="utf-8"), content, "downloaded content")
name = client.file_download("data.txt", function, download_location=str(downloads))
check((downloads / name).read_bytes() == content.encode(), "download with a generated name")

step("a name with spaces and accents, and a 6 MB file, go both ways")
odd = Path("résumé des données.txt")
odd.write_text("accents\n", encoding="utf-8")
client.file_upload(str(odd), function)
check(odd.name in client.files(function), f"files() should list {odd.name!r}: {client.files(function)}")
name = client.file_download(odd.name, function, target_name="odd-copy.txt", download_location=str(downloads))
check_equal((downloads / name).read_text(encoding="utf-8"), "accents\n", "content of the accented file")
client.file_delete(odd.name, function)
large = Path("large.bin")
payload = os.urandom(6 * 1024 * 1024)
large.write_bytes(payload)
client.file_upload(str(large), function)
name = client.file_download("large.bin", function, target_name="large-copy.bin", download_location=str(downloads))
check((downloads / name).read_bytes() == payload, "the 6 MB file came back different")
client.file_delete("large.bin", function)

step("unsafe file names are refused with 400")
expect_error(
    lambda: client.file_download("../etc/passwd", function, download_location=str(downloads)),
    "400",
    errors=(requests.HTTPError, QiskitServerlessException),
)
expect_error(lambda: client.file_delete("../data.txt", function), "400")
expect_error(lambda: client.file_delete("a/b.txt", function), "400")

step("another user sees none of these files")
other = connect("GATEWAY_OTHER_TOKEN")
other_fn = QiskitFunction(title="files-fn")
try:
    other_files = other.files(other_fn)
except QiskitServerlessException as exc:
    other_files = []
    print("    files() of an unknown function for the other user raised:", " ".join(str(exc).split())[:200])
check("data.txt" not in other_files, f"the other user lists this user's files: {other_files}")
expect_error(
    lambda: other.file_download("data.txt", other_fn, download_location=str(downloads)),
    errors=(requests.HTTPError, QiskitServerlessException),
)

step("provider file calls need provider admin rights")
expect_error(lambda: client.provider_files(QiskitFunction(title="acme/helpers")))

step("file_delete")
message = client.file_delete("data.txt", function)
print("    delete answered:", message)
check(isinstance(message, str) and message, f"file_delete should answer a message, got {message!r}")
check("data.txt" not in client.files(function), "data.txt still listed after delete")
expect_error(
    lambda: client.file_download("data.txt", function, download_location=str(downloads)),
    "404",
    errors=(requests.HTTPError, QiskitServerlessException),
)

step("a job of this function reads a file from DATA_PATH and writes one back")
client.file_upload(str(local), function)
job = function.run(mode="echo", read="data.txt", write="from-job.txt")
status = wait_terminal(job)[-1]
if status != "DONE":
    print(job.logs())
check_equal(status, "DONE", "status of the DATA_PATH job")
result = job.result()
check_equal(result["read_back"], content, "the job read the uploaded file from DATA_PATH")
check("data.txt" in (result["data_files"] or []), f"DATA_PATH lists data.txt: {result['data_files']}")
check("from-job.txt" in client.files(function), "a file the job wrote to DATA_PATH is listed by files()")

print("files scenario: OK")
