"""Dependencies: with an allow-list only packages by name pass, at upload and again at submission."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from serverless_gateway.engine.submission import SubmissionRejected, check_dependencies
from serverless_gateway.services.requirements import allowed_names, requirement_refusal
from tests import conftest
from tests.api.programs_support import tune_settings

__all__ = ["tune_settings"]

HOSTILE = [
    "numpy @ https://x/y.whl",
    "numpy@git+https://github.com/numpy/numpy",
    "numpy @ file:///etc/passwd",
    "./numpy",
    "/abs/numpy",
    "-e numpy",
    "numpy --index-url=https://evil.example/simple",
    "numpy\n--extra-index-url https://evil.example/simple",
    "git+https://github.com/numpy/numpy",
    "numpy==1.0 --hash=sha256:00",
]
ALLOWED = ["numpy", "numpy>=1.26,<3", "NumPy[dev]==2.0 ; python_version >= '3.11'", "Scikit_Learn>=1"]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_requirements_are_refused_with_an_allow_list(text: str) -> None:
    allowed = allowed_names(["numpy"])
    assert requirement_refusal(text, allowed) is not None
    with pytest.raises(SubmissionRejected, match="allow-list"):
        check_dependencies([text], ["numpy"])


@pytest.mark.parametrize("text", ALLOWED)
def test_packages_by_name_pass(text: str) -> None:
    assert requirement_refusal(text, allowed_names(["numpy", "scikit-learn"])) is None
    assert check_dependencies([text], ["numpy", "scikit-learn"]) == [text]


def test_without_an_allow_list_any_valid_requirement_passes() -> None:
    assert requirement_refusal("numpy @ https://x/y.whl", None) is None
    assert requirement_refusal("-e numpy", None) is not None  # not a requirement at all
    assert "not an allowed dependency" in (requirement_refusal("requests", allowed_names(["numpy"])) or "")


@pytest.mark.parametrize("text", HOSTILE)
async def test_upload_names_the_refused_requirement(
    app: FastAPI,
    client: AsyncClient,
    alice: conftest.TestUser,
    tune_settings: Callable[..., None],
    text: str,
) -> None:
    tune_settings(dependency_allowlist=["numpy"])
    response = await client.post(
        "/api/v1/programs/upload/",
        headers=alice.headers,
        data={"title": "deps", "entrypoint": "main.py", "dependencies": json.dumps([text])},
        files={"artifact": ("a.tar", conftest.make_tar({"main.py": "print(1)\n"}), "application/x-tar")},
    )
    assert response.status_code == 400, response.text
    assert repr(text) in response.json()["message"]
