"""The official qiskit-serverless client (0.37.0, its own virtualenv) against a live gateway, Ray and PostgreSQL.

Each test checks one scenario script under `scenarios/`, run with the client's python (all of them start together
when the session does); a script prints its steps and exits non-zero on the first failed check, and the test
shows that output with the gateway's log tail.
"""

from __future__ import annotations

import re

import pytest

from tests.compat.conftest import DOCS_EXAMPLE, ROOT, Gateway, Scenarios

pytestmark = pytest.mark.compat

DOC = ROOT / "docs" / "official-client.md"
# Every scenario starts when the session does; a test waits at most this long for its own.
WAIT = 540


def _python_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)]


def test_the_doc_shows_the_example_the_suite_runs() -> None:
    blocks = _python_blocks(DOC.read_text())
    for path in (DOCS_EXAMPLE / "run_hello.py", DOCS_EXAMPLE / "function" / "hello.py"):
        assert path.read_text().strip() in blocks, f"{DOC.name} should show {path.relative_to(ROOT)} verbatim"


def test_functions(scenarios: Scenarios, gateway: Gateway) -> None:
    scenarios.background["functions"].wait(timeout=WAIT).check(gateway)


def test_jobs_of_a_plain_python_function(scenarios: Scenarios, gateway: Gateway) -> None:
    scenarios.background["jobs"].wait(timeout=WAIT).check(gateway)


def test_files(scenarios: Scenarios, gateway: Gateway) -> None:
    scenarios.background["files"].wait(timeout=WAIT).check(gateway)


def test_stop_queued_and_running_jobs(scenarios: Scenarios, gateway: Gateway) -> None:
    scenarios.background["stop"].wait(timeout=WAIT).check(gateway)


def test_provider_admin_uploads_and_grants(scenarios: Scenarios, gateway: Gateway) -> None:
    flow = scenarios.provider()
    flow.setup.check(gateway)
    assert flow.grants_error is None, flow.grants_error


def test_provider_function_for_a_granted_user(scenarios: Scenarios, gateway: Gateway) -> None:
    flow = scenarios.provider()
    if flow.user is None:
        pytest.fail("the provider's setup failed (see test_provider_admin_uploads_and_grants)")
    flow.user.check(gateway)
    assert flow.admin is not None
    flow.admin.check(gateway)


def test_inside_a_job_with_the_client_helpers(scenarios: Scenarios, gateway: Gateway) -> None:
    inside = scenarios.provider().inside_job
    if inside is None:
        pytest.fail("not started: the provider's setup failed (see test_provider_admin_uploads_and_grants)")
    inside.wait(timeout=WAIT).check(gateway)


def test_the_docs_example_runs(scenarios: Scenarios, gateway: Gateway) -> None:
    outcome = scenarios.background["docs example"].wait(timeout=WAIT)
    outcome.check(gateway)
    assert "result: {'message': 'Hello, gateway!'}" in outcome.output
