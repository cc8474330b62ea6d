"""Runs a gateway job's entrypoint inside Ray, then sends the job's result to the gateway (standard library only).

The engine ships this file as `__main__.py` of a small package, the same for every job, and starts the job as
`python -m <package> <entrypoint>` in the program's working directory. It:
  0. trades the one-time GATEWAY_JOB_BOOTSTRAP code for the job's token, arguments and the program's env vars
     (POST /api/v1/jobs/{id}/bootstrap/), so none of them appears in Ray's records (job list, logs, dashboard);
  1. points ARGUMENTS_PATH at a private arguments file, RESULTS_PATH at a fresh scratch file and DATA_PATH at a
     per-job scratch directory;
  2. runs the entrypoint with runpy in this process, so tracebacks reach the logs and the exit code is kept;
  3. sends the RESULTS_PATH file to POST {ENV_JOB_GATEWAY_HOST}/api/v1/jobs/{id}/result/ with the job token.
When DATA_PATH is not the gateway's own file space (S3 storage, or a worker that shares no disk with it:
GATEWAY_DATA_SYNC=1 or an unreachable DATA_PATH), the function's files (GATEWAY_DATA_FUNCTION, optional
GATEWAY_DATA_PROVIDER) are downloaded into DATA_PATH through the files API before the entrypoint, and the
files the job created or changed there are uploaded back after it (top-level regular files only).
A result that is not valid JSON fails the job. When the gateway cannot be reached, the result is printed on one
marked line, which the engine reads back from the logs when the job ends.
"""

from __future__ import annotations

import json
import os
import runpy
import stat
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: every millisecond of start-up is added to every job
    import urllib.request
    from collections.abc import Iterator
    from types import TracebackType

RESULT_MARKER = "__SERVERLESS_GATEWAY_RESULT__"
_SEND_ATTEMPTS = 6


def _say(message: str) -> None:
    sys.stderr.write(f"[gateway] {message}\n")
    sys.stderr.flush()


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
            detail = f"{status} {answer[:2000].decode('utf-8', errors='replace')}"
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


def post_json(url: str, token: str, body: bytes, *, timeout: float) -> tuple[int, bytes]:
    """POST a JSON body with the bearer token over one HTTP/1.0 exchange: (status, the answer's body).

    Neither urllib.request nor http.client: importing them (email's parser, ssl) costs ~20 ms, which every job
    would pay before its entrypoint starts, and these calls need none of what they offer. HTTP/1.0 without
    keep-alive means the answer is neither chunked nor followed by another: it is read to the end of the
    connection and checked against its Content-Length. https is spoken with ssl's default context (imported
    only then); proxy variables are not used: the gateway is reached directly.
    """
    import socket

    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host, port = _host_port(authority, 443 if scheme == "https" else 80)
    request = (
        f"POST {slash}{path or ''} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    connection = socket.create_connection((host, port), timeout=timeout)
    try:
        if scheme == "https":
            import ssl

            connection = ssl.create_default_context().wrap_socket(connection, server_hostname=host)
        connection.sendall(request + body)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    finally:
        connection.close()
    head, separator, content = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split()
    if not separator or len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise OSError("the gateway's answer is not HTTP, or was cut off")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit() and int(value) > len(content):
            raise OSError("the gateway's answer was cut off")
    return int(status[1]), content


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    """`host[:port]` or `[v6 address][:port]` as (host, port)."""
    if authority.startswith("["):
        host, _, after = authority[1:].partition("]")
        port = after.removeprefix(":")
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    return host, int(port) if port else default_port


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


def prepare_environment(here: str) -> str:
    """Set the in-job path variables; returns RESULTS_PATH."""
    scratch = scratch_dir()
    secrets = fetch_bootstrap()
    if secrets is not None:
        apply_bootstrap(secrets, scratch)
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
        import traceback

        traceback.print_exception(type(exc), exc, _user_frames(exc.__traceback__, path))
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _post(url: str, token: str, body: bytes) -> tuple[int, str]:
    status, answer = post_json(url, token, body, timeout=30)
    return status, "" if 200 <= status < 300 else answer[:2000].decode("utf-8", errors="replace")


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


def report_end(exit_code: int) -> None:
    """Tell the gateway the entrypoint has exited (the result is sent), so it finishes the job without waiting
    for Ray's status; one quick try, since Ray's own status ends the job anyway."""
    host = os.environ.get("ENV_JOB_GATEWAY_HOST", "").rstrip("/")
    token = os.environ.get("ENV_JOB_GATEWAY_TOKEN", "")
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY", "")
    if not (host and token and job_id):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    body = json.dumps({"exit_code": max(-255, min(255, int(exit_code)))}).encode()
    try:
        post_json(f"{host}/api/v1/jobs/{job_id}/ended/", token, body, timeout=5)
    except (OSError, ValueError):
        pass


_COPY_CHUNK = 1024 * 1024
FileState = tuple[int, int]
"""(size, mtime in ns) of a file of DATA_PATH, to tell which ones the job created or changed."""


class DataSync:
    """Copies the function's files between the gateway's files API and a local DATA_PATH directory."""

    def __init__(self, *, host: str, token: str, function: str, provider: str, data_path: str) -> None:
        self.host = host.rstrip("/")
        self.token = token
        self.function = function
        self.provider = provider
        self.data_path = data_path
        self.fetched: dict[str, FileState] = {}

    @classmethod
    def from_env(cls) -> DataSync | None:
        """A DataSync when the launcher must sync DATA_PATH (GATEWAY_DATA_SYNC=1), else None."""
        if os.environ.get("GATEWAY_DATA_SYNC") != "1":
            return None
        host = os.environ.get("ENV_JOB_GATEWAY_HOST", "")
        token = os.environ.get("ENV_JOB_GATEWAY_TOKEN", "")
        function = os.environ.get("GATEWAY_DATA_FUNCTION", "")
        if not (host and token and function):
            return None
        provider = os.environ.get("GATEWAY_DATA_PROVIDER", "")
        return cls(host=host, token=token, function=function, provider=provider, data_path=os.environ["DATA_PATH"])

    def _url(self, action: str, **extra: str) -> str:
        import urllib.parse

        query = {"function": self.function, **({"provider": self.provider} if self.provider else {}), **extra}
        return f"{self.host}/api/v1/files/{action}?{urllib.parse.urlencode(query)}"

    def _request(
        self,
        url: str,
        *,
        data: Iterator[bytes] | None = None,
        method: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> urllib.request.Request:
        import urllib.request

        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        return urllib.request.Request(url, data=data, method=method, headers=sent)

    def _state(self, name: str) -> FileState:
        info = os.stat(os.path.join(self.data_path, name))
        return info.st_size, info.st_mtime_ns

    def list_remote(self) -> list[str]:
        import urllib.request

        with urllib.request.urlopen(self._request(self._url("")), timeout=60) as response:
            names = json.loads(response.read())["files"]
        return [str(name) for name in names]

    def pull(self) -> None:
        """Download every file of the function into DATA_PATH."""
        import shutil
        import urllib.request

        for name in self.list_remote():
            if name in ("", ".", "..") or "/" in name or "\\" in name:
                continue
            target = os.path.join(self.data_path, name)
            partial = target + ".gateway-part"
            request = self._request(self._url("download/", file=name))
            with urllib.request.urlopen(request, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, _COPY_CHUNK)
            os.replace(partial, target)
            self.fetched[name] = self._state(name)

    def changed(self) -> list[str]:
        """Top-level regular files of DATA_PATH that are new or differ from what was fetched."""
        names = []
        for entry in sorted(os.scandir(self.data_path), key=lambda item: item.name):
            if not entry.is_file(follow_symlinks=False) or entry.name.endswith(".gateway-part"):
                continue
            if self.fetched.get(entry.name) != self._state(entry.name):
                names.append(entry.name)
        return names

    def upload(self, name: str) -> None:
        """Stream one file to the files API as multipart field `file` (never read whole into memory)."""
        import urllib.request

        path = os.path.join(self.data_path, name)
        boundary = f"gateway-{os.urandom(16).hex()}"
        quoted = name.replace('"', '\\"')
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        # Opened without following a link (one swapped in since the listing fails here), then sized by its fd.
        handle = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            handle.close()
            raise OSError(f"{name!r} is not a regular file")
        size = info.st_size

        def body() -> Iterator[bytes]:
            yield head
            with handle:
                remaining = size  # exactly what Content-Length announced, even if the file grows meanwhile
                while remaining > 0 and (chunk := handle.read(min(_COPY_CHUNK, remaining))):
                    remaining -= len(chunk)
                    yield chunk
            yield tail

        request = self._request(
            self._url("upload/"),
            data=body(),
            method="POST",
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()

    def push(self) -> int:
        """Upload the new and changed files; returns how many failed."""
        import urllib.error

        failed = 0
        for name in self.changed():
            try:
                self.upload(name)
            except (OSError, urllib.error.HTTPError) as exc:
                failed += 1
                _say(f"could not save DATA_PATH file {name!r} to the function's files: {_reason(exc)}")
        return failed


def _reason(exc: BaseException) -> str:
    errors = sys.modules.get("urllib.error")  # an HTTPError can only come from an imported urllib
    if errors is not None and isinstance(exc, errors.HTTPError):
        return f"{exc.code} {exc.read(2000).decode('utf-8', errors='replace')}"
    return str(exc)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        _say("usage: python -m <launcher package> <entrypoint> [args...]")
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        results_path = prepare_environment(here)
    except BootstrapError as exc:
        _say(str(exc))
        return 1
    data_sync = DataSync.from_env()
    if data_sync is not None:
        try:
            data_sync.pull()
        except (OSError, ValueError, KeyError) as exc:
            _say(f"could not fetch the function's files into DATA_PATH: {_reason(exc)}")
    code = run_entrypoint(argv[1], argv[2:])
    if data_sync is not None:
        data_sync.push()
    delivered = deliver_result(results_path)
    final = code or delivered
    report_end(final)
    return final


if __name__ == "__main__":
    sys.exit(main(sys.argv))
