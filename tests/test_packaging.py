"""The lock files, the Docker build context and the scripts agree with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock file (markers ignored)."""
    pins: dict[str, str] = {}
    for line in (ROOT / lock).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _requirements(*, dev: bool) -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = list(project["dependencies"])
    if dev:
        listed += project["optional-dependencies"]["dev"]
    return [Requirement(item) for item in listed]


@pytest.mark.parametrize(("lock", "dev"), [("requirements.lock", False), ("requirements-dev.lock", True)])
def test_the_lock_pins_every_dependency_within_its_range(lock: str, dev: bool) -> None:
    """A dependency added to pyproject.toml without `scripts/lock.sh` would be missing from a fresh install."""
    pins = _pins(lock)
    problems = []
    for requirement in _requirements(dev=dev):
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in {lock}")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{lock} pins {requirement.name}=={version}, outside {requirement.specifier}")
    assert not problems, "run scripts/lock.sh: " + "; ".join(problems)


def test_the_runtime_lock_agrees_with_the_dev_lock() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    differ = {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version}
    assert not differ, f"run scripts/lock.sh: the two lock files pin different versions: {differ}"


def _dockerignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_docker_build_context_holds_what_the_dockerfile_copies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert copied, "the Dockerfile copies nothing"
    ignored = _dockerignored()
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert source not in ignored, f"the Dockerfile copies {source}, which .dockerignore leaves out"
    assert {"pyproject.toml", "README.md", "src", "migrations"} <= set(copied)
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.MULTILINE), "the image must not run as root"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "serverless-gateway"]' in dockerfile  # an init process as PID 1
    assert "install -y --no-install-recommends tini" in dockerfile
    assert "/api/v1/liveness/" in dockerfile


def test_the_wheel_carries_every_migration() -> None:
    """pyproject's data-files globs cover env.py, the template and every revision."""
    data_files = PYPROJECT["tool"]["setuptools"]["data-files"]
    patterns = [pattern for patterns in data_files.values() for pattern in patterns]
    shipped = {path for pattern in patterns for path in ROOT.glob(pattern)}
    wanted = {ROOT / "migrations" / "env.py", ROOT / "migrations" / "script.py.mako"}
    wanted |= set((ROOT / "migrations" / "versions").glob("*.py"))
    assert wanted <= shipped, f"not in the wheel: {sorted(str(p) for p in wanted - shipped)}"


@pytest.mark.parametrize("script", ["scripts/bootstrap.sh", "scripts/serve.sh", "scripts/test.sh", ".ci/run"])
def test_the_scripts_are_strict_bash(script: str) -> None:
    path = ROOT / script
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text()
    assert path.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_pin_carries_the_hashes_of_its_files(lock: str) -> None:
    """The image installs with `pip install --require-hashes`: one pin without a hash would fail its build."""
    entries = re.split(r"\n(?=[A-Za-z0-9][A-Za-z0-9._-]*==)", (ROOT / lock).read_text())
    pinned = [entry for entry in entries if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==", entry)]
    assert {canonicalize_name(entry.split("==")[0]) for entry in pinned} == set(_pins(lock))
    unhashed = [entry.split()[0] for entry in pinned if not re.search(r"--hash=sha256:[0-9a-f]{64}", entry)]
    assert unhashed == []
    assert "--require-hashes -r requirements.lock" in (ROOT / "Dockerfile").read_text()
