"""Runs a gateway job's entrypoint inside Ray, then sends the job's result to the gateway (standard library only).

The engine ships this file as `__main__.py` of a small per-job package (with `arguments.json` beside it) and
starts the job as `python -m <package> <entrypoint>` in the program's working directory. It:
  1. points ARGUMENTS_PATH at the arguments file, RESULTS_PATH at a fresh scratch file and, unless the gateway
     set a reachable one, DATA_PATH at a scratch directory;
  2. runs the entrypoint with runpy in this process, so tracebacks reach the logs and the exit code is kept;
  3. sends the RESULTS_PATH file to POST {ENV_JOB_GATEWAY_HOST}/api/v1/jobs/{id}/result/ with the job token.
A result that is not valid JSON fails the job. When the gateway cannot be reached, the result is printed on one
marked line, which the engine reads back from the logs when the job ends.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from types import TracebackType

RESULT_MARKER = "__SERVERLESS_GATEWAY_RESULT__"
_SEND_ATTEMPTS = 6


def _say(message: str) -> None:
    sys.stderr.write(f"[gateway] {message}\n")
    sys.stderr.flush()


def prepare_environment(here: str) -> str:
    """Set the in-job path variables; returns RESULTS_PATH."""
    scratch = tempfile.mkdtemp(prefix="gateway-job-")
    os.environ["ARGUMENTS_PATH"] = os.path.join(here, "arguments.json")
    results_path = os.path.join(scratch, "results.json")
    os.environ["RESULTS_PATH"] = results_path
    data = os.environ.get("DATA_PATH")
    if data:
        try:
            os.makedirs(data, exist_ok=True)
        except OSError:  # the gateway's file space is not reachable from this worker
            data = None
    if not data:
        data = os.path.join(scratch, "data")
        os.makedirs(data, exist_ok=True)
    os.environ["DATA_PATH"] = data
    return results_path


def _user_frames(tb: TracebackType | None, entrypoint: str) -> TracebackType | None:
    """Start the traceback at the user's script, skipping the launcher's and runpy's own frames."""
    first = tb
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == entrypoint:
            return tb
        tb = tb.tb_next
    return first


def run_entrypoint(entrypoint: str, args: list[str]) -> int:
    """Run the user's script as __main__; returns its exit code."""
    path = os.path.abspath(entrypoint)
    if not os.path.isfile(path):
        _say(f"entrypoint {entrypoint!r} was not found in the program's files")
        return 1
    sys.argv = [entrypoint, *args]
    sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, _user_frames(exc.__traceback__, path))
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _post(url: str, token: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(2000).decode("utf-8", errors="replace")


def send_result(text: str) -> bool | None:
    """POST the result; True when saved, False when the gateway refused it, None when it could not be reached."""
    host = os.environ.get("ENV_JOB_GATEWAY_HOST", "").rstrip("/")
    token = os.environ.get("ENV_JOB_GATEWAY_TOKEN", "")
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY", "")
    if not (host and token and job_id):
        return None
    url = f"{host}/api/v1/jobs/{job_id}/result/"
    body = json.dumps({"result": text}).encode("utf-8")
    attempts = max(1, int(os.environ.get("GATEWAY_RESULT_SEND_ATTEMPTS", _SEND_ATTEMPTS)))
    delay = 0.5
    for attempt in range(attempts):
        try:
            status, detail = _post(url, token, body)
        except (OSError, TimeoutError) as exc:
            status, detail = 0, str(exc)
        if 200 <= status < 300:
            return True
        if 400 <= status < 500 and status not in (408, 429):
            _say(f"the gateway refused the result ({status}): {detail}")
            return False
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    _say(f"could not reach the gateway to save the result ({detail or status})")
    return None


def deliver_result(results_path: str) -> int:
    """Hand the RESULTS_PATH file to the gateway; returns 0, or 1 when the result makes the job fail."""
    if not os.path.isfile(results_path):
        return 0
    with open(results_path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    try:
        json.loads(text)
    except ValueError as exc:
        _say(f"the job's result (the RESULTS_PATH file) is not valid JSON: {exc}")
        return 1
    sent = send_result(text)
    if sent is False:
        return 1
    if sent is None:
        sys.stdout.write(f"\n{RESULT_MARKER} {json.dumps(text)}\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        _say("usage: python -m <launcher package> <entrypoint> [args...]")
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    results_path = prepare_environment(here)
    code = run_entrypoint(argv[1], argv[2:])
    delivered = deliver_result(results_path)
    return code or delivered


if __name__ == "__main__":
    sys.exit(main(sys.argv))
