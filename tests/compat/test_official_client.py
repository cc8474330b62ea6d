"""The official qiskit-serverless client (0.37.0, its own virtualenv) against a live gateway, Ray and PostgreSQL.

Each test runs one scenario script under `scenarios/` with the client's python; the script prints its steps
and exits non-zero on the first failed check, and the test shows that output with the gateway's log tail.
"""

from __future__ import annotations

import re

import pytest

from tests.compat.conftest import DOCS_EXAMPLE, ROOT, Early, Gateway, Runner

pytestmark = pytest.mark.compat

DOC = ROOT / "docs" / "official-client.md"


def _python_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)]


def test_the_doc_shows_the_example_the_suite_runs() -> None:
    blocks = _python_blocks(DOC.read_text())
    for path in (DOCS_EXAMPLE / "run_hello.py", DOCS_EXAMPLE / "function" / "hello.py"):
        assert path.read_text().strip() in blocks, f"{DOC.name} should show {path.relative_to(ROOT)} verbatim"


def test_functions(runner: Runner, gateway: Gateway) -> None:
    runner.run("functions", user="fiona", GATEWAY_OTHER_TOKEN=gateway.tokens["bob"]).check(gateway)


def test_jobs_of_a_plain_python_function(runner: Runner, gateway: Gateway) -> None:
    runner.run("jobs", user="alice", GATEWAY_OTHER_TOKEN=gateway.tokens["bob"]).check(gateway)


def test_files(runner: Runner, gateway: Gateway) -> None:
    runner.run("files", user="fiona", GATEWAY_OTHER_TOKEN=gateway.tokens["bob"]).check(gateway)


def test_stop_queued_and_running_jobs(runner: Runner, gateway: Gateway) -> None:
    runner.run("stop", user="quinn").check(gateway)


def test_provider_admin_uploads_and_grants(early: Early, gateway: Gateway) -> None:
    provider = early.provider()
    provider.setup.check(gateway)
    assert provider.grants_error is None, provider.grants_error


def test_provider_function_for_a_granted_user(runner: Runner, gateway: Gateway, early: Early) -> None:
    provider = early.provider()
    if provider.setup.returncode != 0 or provider.grants_error is not None:
        pytest.fail("the provider's setup failed (see test_provider_admin_uploads_and_grants)")
    runner.run("provider_user", user="ursula", GATEWAY_OTHER_TOKEN=gateway.tokens["bob"]).check(gateway)
    job_id = runner.output_of("provider_user")["job_id"]
    runner.run("provider_admin", user="pam", USER_JOB_ID=job_id).check(gateway)


def test_inside_a_job_with_the_client_helpers(early: Early, gateway: Gateway) -> None:
    inside = early.provider().inside_job
    if inside is None:
        pytest.fail("not started: the provider's setup failed (see test_provider_admin_uploads_and_grants)")
    inside.wait(timeout=540).check(gateway)


def test_the_docs_example_runs(early: Early, gateway: Gateway) -> None:
    outcome = early.docs_example.wait(timeout=480)
    outcome.check(gateway)
    assert "result: {'message': 'Hello, gateway!'}" in outcome.output
