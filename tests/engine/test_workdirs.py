"""Workdirs without Ray: artifacts unpacked once under checks and limits, entrypoints found by bounded `lstat`s."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from serverless_gateway.engine.workdirs import Workdirs, regular_file_inside
from serverless_gateway.services.artifacts import ArtifactLimits, ArtifactRejected, artifact_key
from serverless_gateway.storage.local import LocalStorage
from tests.api.programs_support import MAIN, special, tar_of
from tests.services.test_artifacts_hostile import symlink_ladder

LIMITS = ArtifactLimits(max_members=100, max_unpacked_bytes=1024 * 1024)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "main.py").write_text("x = 1\n")
    (root / "pkg" / "a.py").write_text("")
    os.symlink("a.py", root / "pkg" / "alias.py")
    os.symlink("../a.py", root / "pkg" / "sub" / "up.py")
    os.symlink("..", root / "pkg" / "sub" / "loop")
    os.symlink("pkg", root / "dirlink")
    os.symlink("alias.py", root / "pkg" / "alias2.py")
    os.symlink("../../outside.py", root / "pkg" / "escape.py")
    os.symlink("/etc/passwd", root / "passwd")
    (tmp_path / "outside.py").write_text("")
    return root


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("main.py", True),
        ("./main.py", True),
        ("pkg/a.py", True),
        ("pkg/alias.py", True),
        ("pkg/sub/up.py", True),
        ("pkg", False),
        ("missing.py", False),
        ("dirlink/a.py", False),  # through a directory symlink
        ("pkg/sub/loop/a.py", False),
        ("pkg/alias2.py", False),  # a symlink to a symlink
        ("pkg/escape.py", False),
        ("passwd", False),
        ("../tree/main.py", False),
        ("", False),
    ],
)
def test_regular_file_inside(tree: Path, relative: str, expected: bool) -> None:
    assert regular_file_inside(tree, relative) is expected


async def stored(tmp_path: Path, archive: bytes) -> tuple[Workdirs, str]:
    storage = LocalStorage(tmp_path / "store")
    key = artifact_key("a" * 64)
    await storage.put_bytes(key, archive)
    return Workdirs(tmp_path / "work", storage, limits=LIMITS), key


async def test_program_dir_unpacks_once_and_finds_the_entrypoint(tmp_path: Path) -> None:
    workdirs, key = await stored(tmp_path, tar_of(MAIN, special("entry.py", tarfile.SYMTYPE, "main.py")))
    target = await workdirs.program_dir(sha256="a" * 64, artifact_key=key)
    assert target == tmp_path / "work" / "programs-v2" / ("a" * 64)
    assert await workdirs.has_file("a" * 64, "entry.py")
    assert not await workdirs.has_file("a" * 64, "nothing.py")
    assert [p.name for p in target.parent.iterdir()] == ["a" * 64]  # no download or temporary dir left


async def test_program_dir_refuses_a_stored_ladder_of_directory_symlinks(tmp_path: Path) -> None:
    workdirs, key = await stored(tmp_path, symlink_ladder(24))
    with pytest.raises(ArtifactRejected, match="symlinks to directories"):
        await workdirs.program_dir(sha256="a" * 64, artifact_key=key)
    assert list((tmp_path / "work" / "programs-v2").iterdir()) == []


async def test_program_dir_applies_its_limits(tmp_path: Path) -> None:
    workdirs, key = await stored(tmp_path, tar_of(MAIN, ("big.bin", bytes(2 * 1024 * 1024)), gzip=True))
    with pytest.raises(ArtifactRejected, match="unpacks to more than 1048576 bytes"):
        await workdirs.program_dir(sha256="a" * 64, artifact_key=key)


async def test_a_directory_unpacked_before_the_checks_is_not_reused(tmp_path: Path) -> None:
    workdirs, key = await stored(tmp_path, tar_of(MAIN))
    old = tmp_path / "work" / "programs" / ("a" * 64)
    old.mkdir(parents=True)
    os.symlink(".", old / "loop")
    target = await workdirs.program_dir(sha256="a" * 64, artifact_key=key)
    assert target != old
    assert sorted(p.name for p in target.iterdir()) == ["main.py"]
