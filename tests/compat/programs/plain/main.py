"""A function with no dependency on qiskit_serverless: plain Python and the job's environment variables.

Reads its arguments from ARGUMENTS_PATH and writes its result to RESULTS_PATH; `mode` picks a behaviour.
"""

# ruff: noqa: T201

import json
import os
import sys
import time
import urllib.parse
import urllib.request

from lib.shout import shout


def call_gateway(method, path, *, body=None, form=None):
    """Call this job's own endpoints with the job token, as the client's helpers do."""
    url = f"{os.environ['ENV_JOB_GATEWAY_HOST']}/api/v1/jobs/{os.environ['ENV_JOB_ID_GATEWAY']}/{path}"
    headers = {"Authorization": f"Bearer {os.environ['ENV_JOB_GATEWAY_TOKEN']}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


with open(os.environ["ARGUMENTS_PATH"], encoding="utf-8") as handle:
    arguments = json.load(handle)
mode = arguments.get("mode", "echo")
print(f"echo-marker mode={mode}", flush=True)

if mode == "crash":
    raise RuntimeError("boom-marker")
if mode == "sleep":
    print("sleeping", flush=True)
    time.sleep(float(arguments.get("seconds", 60)))
if mode == "badjson":
    with open(os.environ["RESULTS_PATH"], "w", encoding="utf-8") as handle:
        handle.write("this is { not json")
    sys.exit(0)
if mode == "silent":
    # Ends well without saving a result.
    sys.exit(0)
if mode == "legacy":
    # Older clients POST the result instead of writing RESULTS_PATH.
    call_gateway("POST", "result/", form={"result": json.dumps({"legacy": True, "arguments": arguments})})
    sys.exit(0)

statuses = {}
if mode == "runtime":
    statuses["first"] = call_gateway("POST", "runtime_jobs/", body={"runtime_job": "rt-1", "runtime_session": "sess-1"})
    statuses["second"] = call_gateway("POST", "runtime_jobs/", body={"runtime_job": "rt-2", "runtime_session": None})

data_path = os.environ.get("DATA_PATH")
data_files = sorted(os.listdir(data_path)) if data_path and os.path.isdir(data_path) else None
read_back = None
if arguments.get("read"):
    with open(os.path.join(data_path, arguments["read"]), encoding="utf-8") as handle:
        read_back = handle.read()
if arguments.get("write"):
    os.makedirs(data_path, exist_ok=True)
    with open(os.path.join(data_path, arguments["write"]), "w", encoding="utf-8") as handle:
        handle.write(f"written by job {os.environ.get('ENV_JOB_ID_GATEWAY')}\n")

legacy_arguments = os.environ.get("ENV_JOB_ARGUMENTS")
result = {
    "arguments": {key: value for key, value in arguments.items() if key != "big"},
    "greeting": os.environ.get("GREETING"),
    "job_id": os.environ.get("ENV_JOB_ID_GATEWAY"),
    "env_arguments": json.loads(legacy_arguments) if legacy_arguments and "big" not in arguments else None,
    "data_path_set": bool(data_path),
    "data_files": data_files,
    "read_back": read_back,
    "runtime_posts": statuses,
    "shout": shout("hi"),
    "big_length": len(arguments.get("big", "")),
}
results_path = os.environ["RESULTS_PATH"]
os.makedirs(os.path.dirname(results_path) or ".", exist_ok=True)
with open(results_path, "w", encoding="utf-8") as handle:
    json.dump(result, handle)
print("echo-done", flush=True)
