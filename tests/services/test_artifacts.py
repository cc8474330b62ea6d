"""Artifact checks without extraction, content-addressed storage, and safe unpacking for the engine."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from serverless_gateway.errors import BadRequest
from serverless_gateway.services.artifacts import (
    ArtifactLimits,
    ArtifactRejected,
    artifact_key,
    check_artifact,
    check_entrypoint,
    inspect_archive,
    store_artifact,
    unpack_artifact,
)
from serverless_gateway.storage.local import LocalStorage
from tests.api.programs_support import special, tar_of

LIMITS = ArtifactLimits(max_members=100, max_unpacked_bytes=1_000_000)
MAIN = ("main.py", b"print('hi')\n")


def inspect(archive: bytes, entrypoint: str = "main.py", limits: ArtifactLimits = LIMITS) -> None:
    inspect_archive(io.BytesIO(archive), entrypoint=entrypoint, limits=limits)


def test_inspect_reports_hash_size_and_counts() -> None:
    archive = tar_of(MAIN, ("data/x.bin", b"12345"))
    info = inspect_archive(io.BytesIO(archive), entrypoint="main.py", limits=LIMITS)
    assert info.sha256 == hashlib.sha256(archive).hexdigest()
    assert info.size == len(archive)
    assert info.members == 2
    assert info.unpacked_bytes == len(MAIN[1]) + 5
    assert info.key == f"artifacts/{info.sha256}.tar"


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compressed_archives_are_read(compression: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        info = tarfile.TarInfo("main.py")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"x=1"))
    inspect(buffer.getvalue())


@pytest.mark.parametrize(
    ("entrypoint", "member"),
    [("main.py", "./main.py"), ("./main.py", "main.py"), ("src/job.py", "src//job.py"), ("a/./b.py", "a/b.py")],
)
def test_entrypoint_matching_normalises_paths(entrypoint: str, member: str) -> None:
    inspect(tar_of((member, b"")), entrypoint=entrypoint)


@pytest.mark.parametrize("entrypoint", ["", "/main.py", "../main.py", "a/../../main.py", "dir/", "x" * 256, "a\x00b"])
def test_unsafe_entrypoints_are_refused(entrypoint: str) -> None:
    with pytest.raises(BadRequest, match="relative file path"):
        check_entrypoint(entrypoint)


def test_an_empty_archive_has_no_entrypoint() -> None:
    with pytest.raises(ArtifactRejected, match="entrypoint 'main.py' not found"):
        inspect(bytes(1024))  # two zero blocks: a valid, empty tar


def test_entrypoint_must_be_a_file() -> None:
    with pytest.raises(ArtifactRejected, match="entrypoint 'main.py' not found in the artifact"):
        inspect(tar_of(special("main.py", tarfile.DIRTYPE), ("other.py", b"")))


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (("/abs.py", b""), "absolute path"),
        (("C:/win.py", b""), "absolute path"),
        (("../up.py", b""), "'..'"),
        (("a/../../up.py", b""), "'..'"),
        (special("s", tarfile.SYMTYPE, "../x"), "symlink pointing outside"),
        (special("d/s", tarfile.SYMTYPE, "../../x"), "symlink pointing outside"),
        (special("s", tarfile.SYMTYPE, "/etc/passwd"), "symlink to an absolute path"),
        (special("h", tarfile.LNKTYPE, "../x"), "hard link pointing outside"),
        (special("h", tarfile.LNKTYPE, "/etc/passwd"), "hard link to an absolute path"),
        (special("c", tarfile.CHRTYPE), "device file"),
        (special("b", tarfile.BLKTYPE), "device file"),
        (special("f", tarfile.FIFOTYPE), "FIFO"),
        (special("cont", tarfile.CONTTYPE), None),
    ],
)
def test_member_checks(member: tarfile.TarInfo | tuple[str, bytes], fragment: str | None) -> None:
    archive = tar_of(MAIN, member)
    if fragment is None:
        inspect(archive)  # a contiguous file is a regular file
        return
    with pytest.raises(ArtifactRejected, match=fragment) as caught:
        inspect(archive)
    name = member.name if isinstance(member, tarfile.TarInfo) else member[0]
    assert repr(name) in caught.value.message


def test_links_that_stay_inside_are_allowed() -> None:
    inspect(
        tar_of(
            MAIN,
            ("pkg/a.py", b""),
            special("pkg/b.py", tarfile.SYMTYPE, "a.py"),
            special("pkg/sub/c.py", tarfile.SYMTYPE, "../a.py"),
            special("copy.py", tarfile.LNKTYPE, "pkg/a.py"),
            special("entry.py", tarfile.SYMTYPE, "main.py"),
        ),
        entrypoint="entry.py",
    )


def test_member_count_limit() -> None:
    limits = ArtifactLimits(max_members=3, max_unpacked_bytes=1_000_000)
    inspect(tar_of(MAIN, ("a", b""), ("b", b"")), limits=limits)
    with pytest.raises(ArtifactRejected, match="more than 3 members"):
        inspect(tar_of(MAIN, ("a", b""), ("b", b""), ("c", b"")), limits=limits)


def test_unpacked_size_limit() -> None:
    limits = ArtifactLimits(max_members=10, max_unpacked_bytes=2048)
    inspect(tar_of(("main.py", bytes(1024))), limits=limits)  # a 512-byte header and 1024 bytes of data
    with pytest.raises(ArtifactRejected, match="unpacks to more than 2048 bytes .at member 'b.bin'"):
        inspect(tar_of(("main.py", bytes(1000)), ("b.bin", bytes(1049))), limits=limits)
    # Headers count too: two 600-byte files take 512 + 1024 bytes each in the tar stream.
    with pytest.raises(ArtifactRejected, match="unpacks to more than 2048 bytes .headers included"):
        inspect(tar_of(("main.py", bytes(600)), ("b.bin", bytes(600))), limits=limits)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world" * 100, b"\x1f\x8b" + b"\x00" * 100, b"BZh9" + bytes(range(256)) * 4],
    ids=["empty", "text", "bad-gzip", "bad-bzip2"],
)
def test_non_archives(data: bytes) -> None:
    with pytest.raises(ArtifactRejected, match="tar archive"):
        inspect(data)


def test_truncated_archive() -> None:
    archive = tar_of(MAIN, ("big.bin", os.urandom(50_000)), gzip=True)
    with pytest.raises(ArtifactRejected, match="not a valid tar archive"):
        inspect(archive[: len(archive) // 2])


async def test_check_artifact_runs_off_the_loop_and_rewinds() -> None:
    buffer = io.BytesIO(tar_of(MAIN))
    buffer.seek(5)
    info = await check_artifact(buffer, entrypoint="main.py", limits=LIMITS)
    assert buffer.tell() == 0
    assert info.members == 1


async def test_store_artifact_keeps_one_copy(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    archive = tar_of(MAIN)
    info = await check_artifact(io.BytesIO(archive), entrypoint="main.py", limits=LIMITS)
    key = await store_artifact(storage, io.BytesIO(archive), info)
    assert key == artifact_key(info.sha256)
    assert await storage.get_bytes(key) == archive
    first = await storage.stat(key)
    await store_artifact(storage, io.BytesIO(archive), info)
    assert await storage.stat(key) == first
    assert [o.key for o in await storage.list("artifacts/")] == [f"{info.sha256}.tar"]


@pytest.mark.parametrize("source", ["bytes", "path"])
async def test_unpack_artifact(tmp_path: Path, source: str) -> None:
    archive = tar_of(
        special("pkg", tarfile.DIRTYPE),
        MAIN,
        ("pkg/mod.py", b"X = 1\n"),
        special("pkg/alias.py", tarfile.SYMTYPE, "mod.py"),
        gzip=True,
    )
    path = tmp_path / "a.tar"
    path.write_bytes(archive)
    dest = tmp_path / "unpacked" / "sha"
    result = await unpack_artifact(archive if source == "bytes" else path, dest)
    assert result == dest
    assert (dest / "main.py").read_bytes() == MAIN[1]
    assert (dest / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert os.readlink(dest / "pkg" / "alias.py") == "mod.py"
    assert [p.name for p in dest.parent.iterdir()] == ["sha"]  # no temporary directory left


async def test_unpack_is_done_once(tmp_path: Path) -> None:
    dest = tmp_path / "sha"
    await unpack_artifact(tar_of(MAIN), dest)
    (dest / "marker").write_text("kept")
    await unpack_artifact(tar_of(("other.py", b"")), dest)
    assert (dest / "marker").read_text() == "kept"
    assert not (dest / "other.py").exists()


async def test_concurrent_unpacks_of_the_same_archive(tmp_path: Path) -> None:
    import asyncio

    archive = tar_of(MAIN, *[(f"f{i}.py", b"x" * 1000) for i in range(50)])
    dest = tmp_path / "sha"
    await asyncio.gather(*[unpack_artifact(archive, dest) for _ in range(4)])
    assert len(list(dest.iterdir())) == 51
    assert [p.name for p in tmp_path.iterdir()] == ["sha"]


@pytest.mark.parametrize(
    "member",
    [
        ("../escape.py", b"x"),
        special("link", tarfile.SYMTYPE, "/etc/passwd"),
        special("dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute-symlink", "device"],
)
async def test_unpack_refuses_unsafe_archives_that_skipped_the_check(
    tmp_path: Path, member: tarfile.TarInfo | tuple[str, bytes]
) -> None:
    dest = tmp_path / "inner" / "sha"
    with pytest.raises(ArtifactRejected, match="cannot unpack the artifact"):
        await unpack_artifact(tar_of(MAIN, member), dest)
    assert not dest.exists()
    assert not (tmp_path / "inner" / "escape.py").exists()
    assert list((tmp_path / "inner").iterdir()) == []


async def test_unpack_of_garbage(tmp_path: Path) -> None:
    with pytest.raises(ArtifactRejected):
        await unpack_artifact(b"not a tar at all" * 40, tmp_path / "sha")
    assert list(tmp_path.iterdir()) == []
