"""Runs a gateway job's entrypoint inside Ray, then sends the job's result to the gateway (standard library only).

The engine ships this file as `__main__.py` of a small package (with `launcher_http.py` and `launcher_data.py`),
the same for every job, and starts the job as `python -m <package> <entrypoint>` in the program's working
directory. It:
  0. trades the one-time GATEWAY_JOB_BOOTSTRAP code for the job's token, arguments, the program's env vars and
     the names of the function's files (POST /api/v1/jobs/{id}/bootstrap/), so none of the secrets appears in
     Ray's records (job list, logs, dashboard);
  1. points ARGUMENTS_PATH at a private arguments file, RESULTS_PATH at a fresh scratch file and DATA_PATH at a
     per-job scratch directory;
  2. runs the entrypoint with runpy in this process, so tracebacks reach the logs and the exit code is kept;
  3. sends the RESULTS_PATH file to POST {ENV_JOB_GATEWAY_HOST}/api/v1/jobs/{id}/result/ with the job token.
DATA_PATH is synced with the function's files (GATEWAY_DATA_FUNCTION, optional GATEWAY_DATA_PROVIDER) through
the files API: they are downloaded before the entrypoint, and the files the job created or changed there are
uploaded back after it (top-level regular files only; see launcher_data.py).
A result that is not valid JSON fails the job. When the gateway cannot be reached, the result is printed on one
marked line, which the engine reads back from the logs when the job ends.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from typing import TYPE_CHECKING

from .launcher_data import DataSync
from .launcher_http import answer_text, post_json, say

if TYPE_CHECKING:  # imported where used: every millisecond of start-up is added to every job
    from types import TracebackType

RESULT_MARKER = "__SERVERLESS_GATEWAY_RESULT__"
_SEND_ATTEMPTS = 6


# Environment strings above ~128 KiB break exec(); bigger arguments reach the job only through ARGUMENTS_PATH.
MAX_ENV_ARGUMENTS_BYTES = 64 * 1024
_BOOTSTRAP_ATTEMPTS = 6


class BootstrapError(Exception):
    """The job's token and arguments could not be fetched from the gateway."""


def fetch_bootstrap() -> dict[str, object] | None:
    """Trade GATEWAY_JOB_BOOTSTRAP for the job's secrets (removed from the environment first); None without one."""
    code = os.environ.pop("GATEWAY_JOB_BOOTSTRAP", "")
    if not code:
        return None
    host = os.environ.get("ENV_JOB_GATEWAY_HOST", "").rstrip("/")
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY", "")
    url = f"{host}/api/v1/jobs/{job_id}/bootstrap/"
    delay, detail = 0.5, ""
    for attempt in range(_BOOTSTRAP_ATTEMPTS):
        try:
            status, answer = post_json(url, code, b"{}", timeout=30)
            if 200 <= status < 300:
                body: dict[str, object] = json.loads(answer)
                return body
            detail = f"{status} {answer_text(answer)}"
            if 400 <= status < 500 and status not in (408, 429):
                break
        except (OSError, ValueError) as exc:
            detail = str(exc)
        if attempt + 1 < _BOOTSTRAP_ATTEMPTS:
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise BootstrapError(f"could not fetch this job's token and arguments from the gateway: {detail}")


def apply_bootstrap(secrets: dict[str, object], scratch: str) -> None:
    """The program's env vars, then the official client's in-job contract (these win), then the arguments."""
    env_vars = secrets.get("env_vars") or {}
    if isinstance(env_vars, dict):
        for key, value in env_vars.items():
            os.environ[str(key)] = str(value)
    os.environ["ENV_JOB_GATEWAY_TOKEN"] = str(secrets.get("token", ""))
    arguments = str(secrets.get("arguments", "{}"))
    path = os.path.join(scratch, "arguments.json")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(arguments)
    os.environ["ARGUMENTS_PATH"] = path
    if len(arguments.encode("utf-8")) <= MAX_ENV_ARGUMENTS_BYTES:
        os.environ["ENV_JOB_ARGUMENTS"] = arguments


def scratch_dir() -> str:
    """A new private directory for this job (what tempfile.mkdtemp does, without importing tempfile)."""
    base = os.environ.get("TMPDIR") or os.environ.get("TEMP") or os.environ.get("TMP") or "/tmp"
    while True:
        path = os.path.join(base, f"gateway-job-{os.urandom(8).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return os.path.abspath(path)


def prepare_environment(here: str) -> tuple[str, list[str] | None]:
    """Set the in-job path variables; returns RESULTS_PATH and the function's file names, when the bootstrap
    answer gave them (then DATA_PATH's sync lists nothing itself)."""
    scratch = scratch_dir()
    secrets = fetch_bootstrap()
    files: list[str] | None = None
    if secrets is not None:
        apply_bootstrap(secrets, scratch)
        names = secrets.get("files")
        if isinstance(names, list):
            files = [str(name) for name in names]
    else:
        os.environ["ARGUMENTS_PATH"] = os.path.join(here, "arguments.json")
    results_path = os.path.join(scratch, "results.json")
    os.environ["RESULTS_PATH"] = results_path
    # Always a fresh per-job directory (whatever the environment said), synced with the function's files.
    data = os.path.join(scratch, "data")
    os.makedirs(data, exist_ok=True)
    os.environ["DATA_PATH"] = data
    if os.environ.get("GATEWAY_DATA_FUNCTION"):
        os.environ["GATEWAY_DATA_SYNC"] = "1"
    return results_path, files


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
        say(f"entrypoint {entrypoint!r} was not found in the program's files")
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
        import traceback

        traceback.print_exception(type(exc), exc, _user_frames(exc.__traceback__, path))
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _post(url: str, token: str, body: bytes) -> tuple[int, str]:
    status, answer = post_json(url, token, body, timeout=30)
    return status, "" if 200 <= status < 300 else answer_text(answer)


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
            say(f"the gateway refused the result ({status}): {detail}")
            return False
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    say(f"could not reach the gateway to save the result ({detail or status})")
    return None


def deliver_result(results_path: str) -> tuple[int, bool]:
    """Hand the RESULTS_PATH file to the gateway: (0, or 1 when the result makes the job fail; whether it could
    only be printed into the log, where the gateway reads it back)."""
    if not os.path.isfile(results_path):
        return 0, False
    with open(results_path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    try:
        json.loads(text)
    except ValueError as exc:
        say(f"the job's result (the RESULTS_PATH file) is not valid JSON: {exc}")
        return 1, False
    sent = send_result(text)
    if sent is False:
        return 1, False
    if sent is None:
        sys.stdout.write(f"\n{RESULT_MARKER} {json.dumps(text)}\n")
        sys.stdout.flush()
        return 0, True
    return 0, False


def report_end(exit_code: int, *, result_in_log: bool = False) -> None:
    """Tell the gateway the entrypoint has exited (the result is sent, or printed into the log), so it finishes
    the job without waiting for Ray's status; one quick try, since Ray's own status ends the job anyway."""
    host = os.environ.get("ENV_JOB_GATEWAY_HOST", "").rstrip("/")
    token = os.environ.get("ENV_JOB_GATEWAY_TOKEN", "")
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY", "")
    if not (host and token and job_id):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    report: dict[str, object] = {"exit_code": max(-255, min(255, int(exit_code)))}
    if result_in_log:
        report["result_in_log"] = True
    body = json.dumps(report).encode()
    try:
        post_json(f"{host}/api/v1/jobs/{job_id}/ended/", token, body, timeout=5)
    except (OSError, ValueError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        say("usage: python -m <launcher package> <entrypoint> [args...]")
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        results_path, bootstrap_files = prepare_environment(here)
    except BootstrapError as exc:
        say(str(exc))
        return 1
    data_sync = DataSync.from_env(remote=bootstrap_files)
    if data_sync is not None:
        try:
            data_sync.pull()
        except (OSError, ValueError, KeyError) as exc:
            say(f"could not fetch the function's files into DATA_PATH: {exc}")
    code = run_entrypoint(argv[1], argv[2:])
    if data_sync is not None:
        data_sync.push()
    delivered, result_in_log = deliver_result(results_path)
    final = code or delivered
    report_end(final, result_in_log=result_in_log)
    return final


if __name__ == "__main__":
    sys.exit(main(sys.argv))
