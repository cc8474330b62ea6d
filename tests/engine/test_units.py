"""Engine pieces that need no Ray: log capping, error sorting, dependency checks and the launcher script."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverless_gateway.engine import launcher, launcher_http
from serverless_gateway.engine.joblogs import cap_tail, extract_result, failure_summary
from serverless_gateway.engine.local_ray import free_port
from serverless_gateway.engine.ray_client import (
    RayJobNotFound,
    RayRejected,
    RayUnavailable,
    SubmissionExists,
    classify,
)
from serverless_gateway.engine.submission import (
    SubmissionRejected,
    check_dependencies,
    job_id_from_submission,
    submission_id_for,
)
from serverless_gateway.engine.workdirs import LAUNCHER_FILES


def test_cap_tail_keeps_the_end_with_a_note() -> None:
    text = "".join(f"line {index}\n" for index in range(1000))
    capped = cap_tail(text, 200)
    assert capped.startswith("[gateway] logs truncated: the first ")
    assert capped.endswith("line 999\n")
    assert len(capped.split("\n", 1)[1].encode()) <= 200
    assert cap_tail("short\n", 200) == "short\n"


def test_failure_summary_names_the_exception_of_a_failed_entrypoint() -> None:
    logs = 'about to fail\nTraceback (most recent call last):\n  File "main.py", line 2\nValueError: boom\n\n'
    ray = "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n" + logs

    assert failure_summary(ray, logs) == "Job entrypoint command failed with exit code 1: ValueError: boom"
    assert failure_summary(ray, "") == "Job entrypoint command failed with exit code 1"


def test_failure_summary_takes_pips_error_from_a_runtime_env_failure() -> None:
    ray = (
        "runtime_env setup failed: Failed to set up runtime environment.\n"
        "Traceback (most recent call last):\n  File pip.py\nLast 50 lines of stdout:\n"
        "    ERROR: Could not find a version that satisfies the requirement left-pad==9.9 (from versions: none)\n"
        "    ERROR: No matching distribution found for left-pad==9.9\n"
    )

    assert failure_summary(ray, "") == (
        "runtime_env setup failed: Failed to set up runtime environment. "
        "ERROR: No matching distribution found for left-pad==9.9"
    )


def test_failure_summary_of_a_one_line_reason_is_that_line() -> None:
    assert failure_summary("Job supervisor actor died", "") == "Job supervisor actor died"
    assert failure_summary(None, "anything") is None
    assert len(failure_summary("x" * 5000, "") or "") == 1000


def test_extract_result_takes_the_marker_line_out() -> None:
    encoded = json.dumps('{"a": 1}')
    raw = f"hello\n{launcher.RESULT_MARKER} {encoded}\nbye\n"
    logs, result = extract_result(raw)
    assert logs == "hello\nbye\n"
    assert result == '{"a": 1}'
    assert extract_result("plain\n") == ("plain\n", None)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("refused"), RayUnavailable),
        (httpx.ReadTimeout("slow"), RayUnavailable),
        (ConnectionError("Failed to connect to Ray at address: http://x."), RayUnavailable),
        (RuntimeError("Request failed with status code 503: busy."), RayUnavailable),
        (
            RuntimeError(
                "Request failed with status code 500: ValueError: Job with submission_id gw-1 already exists."
            ),
            SubmissionExists,
        ),
        (RuntimeError("Request failed with status code 404: Job gw-1 does not exist."), RayJobNotFound),
        (
            RuntimeError("Request failed with status code 500: Request failed with status code 400: bad env."),
            RayRejected,
        ),
        (ValueError("invalid runtime_env"), RayRejected),
    ],
)
def test_ray_errors_are_sorted(error: Exception, kind: type[Exception]) -> None:
    assert isinstance(classify(error), kind)


def test_dependencies_and_allow_list() -> None:
    assert check_dependencies(["numpy==1.0", " "], None) == ["numpy==1.0"]
    assert check_dependencies(["Scikit_Learn>=1"], ["scikit-learn"]) == ["Scikit_Learn>=1"]
    with pytest.raises(SubmissionRejected, match="allow-list"):
        check_dependencies(["requests"], ["numpy"])


def test_submission_ids_round_trip() -> None:
    import uuid

    job_id = uuid.uuid4()
    assert job_id_from_submission(submission_id_for(job_id)) == job_id
    assert job_id_from_submission("raysubmit_abc") is None


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in gateway for the launcher: records calls; answers a bootstrap and serves files when told to."""

    received: list[dict[str, Any]] = []
    answer = 200
    bootstrap: dict[str, Any] | None = None
    files: dict[str, bytes] = {}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.received.append({"path": self.path, "auth": self.headers["Authorization"], "body": json.loads(body)})
        if self.path.endswith("/bootstrap/") and _Recorder.bootstrap is not None:
            self._send(200, json.dumps(_Recorder.bootstrap).encode())
            return
        self.send_response(_Recorder.answer)
        self.end_headers()

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        _Recorder.received.append({"path": self.path, "auth": self.headers["Authorization"], "body": None})
        name = parse_qs(urlsplit(self.path).query).get("file", [""])[0]
        if name in _Recorder.files:
            self._send(200, _Recorder.files[name])
        else:
            self._send(404, b'{"message": "not found"}')

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.received = []
    _Recorder.answer = 200
    _Recorder.bootstrap = None
    _Recorder.files = {}
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run_launcher(
    tmp_path: Path, program: str, host: str, *, arguments: str = "{}", extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    package = tmp_path / "pkg" / "serverless_gateway_job"
    package.mkdir(parents=True)
    for name, source in LAUNCHER_FILES.items():
        shutil.copy(source, package / name)
    (package / "__init__.py").write_text("")
    (package / "arguments.json").write_text(arguments)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "main.py").write_text(program)
    env = {
        "PYTHONPATH": str(tmp_path / "pkg"),
        "ENV_JOB_GATEWAY_HOST": host,
        "ENV_JOB_GATEWAY_TOKEN": "gwjob_secret",
        "ENV_JOB_ID_GATEWAY": "job-1",
        "GATEWAY_RESULT_SEND_ATTEMPTS": "1",
        "PATH": "/usr/bin:/bin",
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "serverless_gateway_job", "main.py"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SAVING = """
import json, os
args = json.load(open(os.environ["ARGUMENTS_PATH"]))
assert os.path.isdir(os.environ["DATA_PATH"])
json.dump({"twice": args["x"] * 2}, open(os.environ["RESULTS_PATH"], "w"))
print("done")
"""


def test_launcher_runs_the_entrypoint_and_posts_the_result(tmp_path: Path, recorder: str) -> None:
    done = run_launcher(tmp_path, SAVING, recorder, arguments='{"x": 21}')
    assert done.returncode == 0, done.stderr
    assert "done" in done.stdout
    assert _Recorder.received == [
        {"path": "/api/v1/jobs/job-1/result/", "auth": "Bearer gwjob_secret", "body": {"result": '{"twice": 42}'}},
        # then the end, so the gateway finishes the job without waiting for Ray's status
        {"path": "/api/v1/jobs/job-1/ended/", "auth": "Bearer gwjob_secret", "body": {"exit_code": 0}},
    ]


READS_ITS_FILE = """
import os, sys
print(open(os.path.join(os.environ["DATA_PATH"], "données.txt")).read())
print("heavy http modules:", sorted({"urllib.request", "http.client", "email.parser"} & set(sys.modules)))
"""


def test_launcher_takes_the_file_names_from_the_bootstrap_and_lists_nothing(tmp_path: Path, recorder: str) -> None:
    _Recorder.bootstrap = {"token": "gwjob_new", "arguments": "{}", "env_vars": {}, "files": ["données.txt"]}
    _Recorder.files = {"données.txt": "contenu é".encode()}
    env = {"GATEWAY_JOB_BOOTSTRAP": "gwboot_once", "GATEWAY_DATA_FUNCTION": "fn"}
    done = run_launcher(tmp_path, READS_ITS_FILE, recorder, extra_env=env)
    assert done.returncode == 0, done.stderr
    assert "contenu é" in done.stdout
    assert "heavy http modules: []" in done.stdout  # no job pays for importing urllib.request
    assert [(r["path"], r["auth"]) for r in _Recorder.received] == [
        ("/api/v1/jobs/job-1/bootstrap/", "Bearer gwboot_once"),
        ("/api/v1/files/download/?function=fn&file=donn%C3%A9es.txt", "Bearer gwjob_new"),
        ("/api/v1/jobs/job-1/ended/", "Bearer gwjob_new"),
    ]


def test_launcher_lists_the_files_itself_when_the_bootstrap_did_not(tmp_path: Path, recorder: str) -> None:
    _Recorder.bootstrap = {"token": "gwjob_new", "arguments": "{}", "env_vars": {}, "files": None}
    env = {"GATEWAY_JOB_BOOTSTRAP": "gwboot_once", "GATEWAY_DATA_FUNCTION": "fn"}
    done = run_launcher(tmp_path, "print('ran')\n", recorder, extra_env=env)
    assert done.returncode == 0, done.stderr
    assert "ran" in done.stdout
    # The stand-in answers the listing with a 404: the job runs anyway and says why DATA_PATH is empty.
    assert "could not fetch the function's files into DATA_PATH: 404" in done.stderr
    assert [r["path"] for r in _Recorder.received] == [
        "/api/v1/jobs/job-1/bootstrap/",
        "/api/v1/files/?function=fn",
        "/api/v1/jobs/job-1/ended/",
    ]


def test_data_path_is_always_a_fresh_scratch_dir_of_the_job(tmp_path: Path, recorder: str) -> None:
    shared = tmp_path / "someone-elses-files"
    shared.mkdir()
    program = "import os\nprint('DATA_PATH=' + os.environ['DATA_PATH'])\nopen(os.environ['DATA_PATH'] + '/x', 'w')\n"
    done = run_launcher(tmp_path, program, recorder, extra_env={"DATA_PATH": str(shared)})
    assert done.returncode == 0, done.stderr
    data_path = done.stdout.split("DATA_PATH=", 1)[1].split()[0]
    assert data_path != str(shared)
    assert "gateway-job-" in data_path
    assert list(shared.iterdir()) == []


def test_launcher_keeps_exit_codes_and_shows_the_users_traceback(tmp_path: Path, recorder: str) -> None:
    failing = run_launcher(tmp_path / "a", "def f():\n    raise KeyError('nope')\nf()\n", recorder)
    assert failing.returncode == 1
    assert "KeyError: 'nope'" in failing.stderr
    assert 'main.py", line 3' in failing.stderr
    assert "runpy" not in failing.stderr
    assert run_launcher(tmp_path / "b", "import sys\nsys.exit(3)\n", recorder).returncode == 3
    assert [r["body"] for r in _Recorder.received] == [{"exit_code": 1}, {"exit_code": 3}]  # ends only, no result


def test_launcher_refuses_a_result_that_is_not_json(tmp_path: Path, recorder: str) -> None:
    done = run_launcher(tmp_path, "import os\nopen(os.environ['RESULTS_PATH'], 'w').write('nope')\n", recorder)
    assert done.returncode == 1
    assert "not valid JSON" in done.stderr
    assert [r["path"] for r in _Recorder.received] == ["/api/v1/jobs/job-1/ended/"]  # no result was sent


def test_launcher_prints_the_result_when_the_gateway_is_unreachable(tmp_path: Path) -> None:
    done = run_launcher(tmp_path, SAVING, f"http://127.0.0.1:{free_port()}", arguments='{"x": 1}')
    assert done.returncode == 0, done.stderr
    assert extract_result(done.stdout)[1] == '{"twice": 2}'


def test_launcher_says_so_when_the_result_could_only_be_printed_into_the_log(tmp_path: Path, recorder: str) -> None:
    _Recorder.answer = 503  # the result is not taken (one attempt, see run_launcher)
    done = run_launcher(tmp_path, SAVING, recorder, arguments='{"x": 4}')
    assert done.returncode == 0, done.stderr
    assert extract_result(done.stdout)[1] == '{"twice": 8}'
    assert [r["body"] for r in _Recorder.received][1:] == [{"exit_code": 0, "result_in_log": True}]


def test_launcher_fails_the_job_when_the_gateway_refuses_the_result(tmp_path: Path, recorder: str) -> None:
    _Recorder.answer = 413
    done = run_launcher(tmp_path, SAVING, recorder, arguments='{"x": 1}')
    assert done.returncode == 1
    assert "refused the result (413)" in done.stderr


def test_the_data_sync_never_uploads_through_a_symlink(tmp_path: Path, recorder: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "outside.txt"
    secret.write_text("not the job's")
    (data / "leak").symlink_to(secret)
    (data / "own.txt").write_text("the job's")
    sync = launcher.DataSync(host=recorder, token="gwjob_secret", function="fn", provider="", data_path=str(data))
    assert sync.changed() == ["own.txt"]  # a link is not listed
    with pytest.raises(OSError, match="symbolic links"):  # nor read, should one be swapped in after the listing
        sync.upload("leak")
    assert _Recorder.received == []


class _PackagesOnACluster:
    """Ray's package endpoints (`GET`/`PUT /api/packages/gcs/<name>`): the cluster may drop a package nobody used."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.uploads: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.removeprefix("/api/packages/gcs/")
        if request.method == "PUT":
            self.uploads.append(name)
            self.stored[name] = request.content
            return httpx.Response(200, json={})
        return httpx.Response(200 if name in self.stored else 404, json={})


async def test_package_uris_are_reused_and_uploaded_again_once_ray_dropped_them(tmp_path: Path) -> None:
    from serverless_gateway.engine.ray_client import RayJobs

    workdir, module = tmp_path / "work", tmp_path / "launcher"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "empty").mkdir()
    (workdir / "main.py").write_text("print('hi')\n")
    (workdir / "sub" / "helper.py").write_text("X = 1\n")
    (workdir / "escape").symlink_to("/etc/hostname")  # never followed out of the directory
    module.mkdir()
    (module / "__main__.py").write_text("pass\n")
    cluster = _PackagesOnACluster()
    ray = RayJobs("http://ray.test")
    ray._http = httpx.AsyncClient(base_url="http://ray.test", transport=httpx.MockTransport(cluster))
    env = {"working_dir": str(workdir), "py_modules": [str(module)], "env_vars": {"A": "1"}}
    first = await ray._with_package_uris(env)
    assert first["working_dir"].startswith("gcs://_ray_pkg_")
    assert first["working_dir"].endswith(".zip")
    assert first["py_modules"][0].startswith("gcs://_ray_pkg_")
    assert first["env_vars"] == {"A": "1"}
    assert env["working_dir"] == str(workdir)  # the caller's dict is left alone
    contents = sorted(sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) for data in cluster.stored.values())
    assert contents == [["empty/", "main.py", "sub/helper.py"], ["launcher/__main__.py"]]
    assert await ray._with_package_uris(env) == first
    assert len(cluster.uploads) == 2  # zipped and uploaded once each
    cluster.stored.clear()  # Ray garbage-collected them
    assert await ray._with_package_uris(env) == first  # the same content: the same URIs
    assert len(cluster.uploads) == 4
    await ray.close()


async def test_the_launcher_travels_in_the_working_dir_package_and_wins_over_a_programs_own(tmp_path: Path) -> None:
    from serverless_gateway.engine.ray_client import RayJobs

    workdir, launcher_dir = tmp_path / "work", tmp_path / "built" / "serverless_gateway_job"
    (workdir / "serverless_gateway_job").mkdir(parents=True)
    (workdir / "serverless_gateway_job" / "__main__.py").write_text("print('not the launcher')\n")
    (workdir / "main.py").write_text("print('hi')\n")
    launcher_dir.mkdir(parents=True)
    (launcher_dir / "__main__.py").write_text("LAUNCHER = True\n")
    cluster = _PackagesOnACluster()
    ray = RayJobs("http://ray.test")
    ray._http = httpx.AsyncClient(base_url="http://ray.test", transport=httpx.MockTransport(cluster))
    env = await ray._with_package_uris({"working_dir": str(workdir)}, bundle=str(launcher_dir))
    assert set(env) == {"working_dir"}  # one package: no py_modules to set up
    [data] = cluster.stored.values()
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(archive.namelist()) == ["main.py", "serverless_gateway_job/__main__.py"]
    assert archive.read("serverless_gateway_job/__main__.py") == b"LAUNCHER = True\n"
    # The same program without the launcher is another package (the cache tells them apart).
    plain = await ray._with_package_uris({"working_dir": str(workdir)})
    assert plain["working_dir"] != env["working_dir"]
    await ray.close()


def _one_answer(raw: bytes) -> tuple[str, list[bytes]]:
    """A server on a free port that reads one request, answers `raw` and closes: (its URL, requests seen)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            lengths = [line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")]
            length = int(lengths[0]) if lengths else 0
            while len(body) < length:
                body += connection.recv(65536)
            seen.append(head + b"\r\n\r\n" + body)
            connection.sendall(raw)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", seen


def test_the_launchers_http_post_reads_answers_and_refuses_broken_ones() -> None:
    url, seen = _one_answer(b'HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{"ok": true}')
    assert launcher.post_json(f"{url}/api/v1/jobs/j/result/", "gwjob_x", b'{"a": 1}', timeout=5) == (
        201,
        b'{"ok": true}',
    )
    request = seen[0]
    assert request.startswith(b"POST /api/v1/jobs/j/result/ HTTP/1.0\r\n")
    assert b"\r\nAuthorization: Bearer gwjob_x\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a": 1}')

    url, _ = _one_answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nnot yours")
    assert launcher.post_json(url + "/", "t", b"{}", timeout=5) == (403, b"not yours")

    url, _ = _one_answer(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut')  # closed mid-answer
    with pytest.raises(OSError, match="cut off"):
        launcher.post_json(url + "/", "t", b"{}", timeout=5)

    url, _ = _one_answer(b"SSH-2.0-OpenSSH\r\n")  # not HTTP at all
    with pytest.raises(OSError, match="not HTTP"):
        launcher.post_json(url + "/", "t", b"{}", timeout=5)


def test_a_download_cut_off_midway_leaves_nothing_in_data_path(tmp_path: Path) -> None:
    url, seen = _one_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    sync = launcher.DataSync(
        host=url, token="gwjob_t", function="fn", provider="", data_path=str(tmp_path), remote=["big.bin"]
    )
    with pytest.raises(OSError, match="cut off"):
        sync.pull()
    assert list(tmp_path.iterdir()) == []
    assert seen[0].startswith(b"GET /api/v1/files/download/?function=fn&file=big.bin HTTP/1.0\r\n")


def test_the_launchers_host_parsing() -> None:
    assert launcher_http._host_port("gw.example:8443", 443) == ("gw.example", 8443)
    assert launcher_http._host_port("gw.example", 443) == ("gw.example", 443)
    assert launcher_http._host_port("[::1]:8000", 80) == ("::1", 8000)
    assert launcher_http._host_port("[::1]", 80) == ("::1", 80)
