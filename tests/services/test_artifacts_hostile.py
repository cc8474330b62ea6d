"""Crafted archives against the artifact checks: link ladders and cycles, tar bombs, oversized headers."""

from __future__ import annotations

import io
import os
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from serverless_gateway.services.artifacts import ArtifactLimits, ArtifactRejected, inspect_archive, unpack_artifact
from serverless_gateway.services.tar_stream import MAX_EXTENDED_HEADER_BYTES
from tests.api.programs_support import special, tar_of

LIMITS = ArtifactLimits(max_members=1000, max_unpacked_bytes=1024 * 1024)
MAIN = ("main.py", b"print('hi')\n")


class ReadCounter(io.BytesIO):
    """A BytesIO that counts the bytes read from it, to show how little of a bomb was decompressed."""

    total = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.total += len(data)
        return data


def peak_memory(action: Callable[[], object], match: str) -> int:
    """The most memory Python allocated while `action` ran (it must raise ArtifactRejected matching `match`)."""
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactRejected, match=match):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def inspect(archive: bytes, limits: ArtifactLimits = LIMITS, entrypoint: str = "main.py") -> None:
    inspect_archive(io.BytesIO(archive), entrypoint=entrypoint, limits=limits)


def refused(archive: bytes, fragment: str, limits: ArtifactLimits = LIMITS) -> str:
    with pytest.raises(ArtifactRejected, match=fragment) as caught:
        inspect(archive, limits)
    return caught.value.message


def symlink_ladder(levels: int) -> bytes:
    """Each level's directory holds two symlinks to the next level: 2**levels paths for whoever follows them."""
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [MAIN]
    for level in range(levels):
        members.append(special(f"l{level}", tarfile.DIRTYPE))
        members.append(special(f"l{level}/a", tarfile.SYMTYPE, f"../l{level + 1}"))
        members.append(special(f"l{level}/b", tarfile.SYMTYPE, f"../l{level + 1}"))
    members.append(special(f"l{levels}", tarfile.DIRTYPE))
    return tar_of(*members)


def raw_header(name: str, kind: bytes, data: bytes) -> bytes:
    """One header block of `kind` followed by its data, padded to whole blocks (what tarfile never writes)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    padding = (-len(data)) % tarfile.BLOCKSIZE
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(padding)


def pax_record(key: str, value: str) -> bytes:
    """One `length key=value\\n` pax record (the length counts itself)."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def with_main(*blocks: bytes) -> bytes:
    return b"".join(blocks) + tar_of(MAIN)


def test_a_ladder_of_directory_symlinks_is_refused_quickly() -> None:
    archive = symlink_ladder(24)
    started = time.perf_counter()
    message = refused(archive, "symlinks to directories or to other symlinks are refused")
    assert time.perf_counter() - started < 1.0
    assert "'l0/a'" in message


@pytest.mark.parametrize(
    "links",
    [
        [special("a", tarfile.SYMTYPE, "b"), special("b", tarfile.SYMTYPE, "a")],
        [special("self", tarfile.SYMTYPE, "self")],
        [special("here", tarfile.SYMTYPE, ".")],
        [("pkg/x.py", b""), special("pkg/up", tarfile.SYMTYPE, "..")],
        [special("alias", tarfile.SYMTYPE, "main.py"), special("alias2", tarfile.SYMTYPE, "alias")],
        [special("dangling", tarfile.SYMTYPE, "nowhere.py")],
    ],
    ids=["cycle", "self", "dot", "parent-dir", "link-to-link", "dangling"],
)
def test_symlinks_to_anything_but_a_regular_file_are_refused(links: list[tarfile.TarInfo]) -> None:
    refused(tar_of(MAIN, *links), "which is not a regular file of the archive")


@pytest.mark.parametrize("target", ["../../etc/passwd", "../../x", "a/../../..", "/etc/passwd"])
def test_symlinks_escaping_the_tree_are_refused(target: str) -> None:
    refused(tar_of(MAIN, special("d/s", tarfile.SYMTYPE, target)), "outside the archive|absolute path")


def test_a_symlink_may_point_to_a_file_declared_later() -> None:
    inspect(tar_of(special("entry.py", tarfile.SYMTYPE, "src/main.py"), ("src/main.py", b"")), entrypoint="entry.py")


@pytest.mark.parametrize(
    "members",
    [
        [special("early", tarfile.LNKTYPE, "later.py"), ("later.py", b"x")],
        [special("pkg", tarfile.DIRTYPE), special("h", tarfile.LNKTYPE, "pkg")],
        [special("s", tarfile.SYMTYPE, "main.py"), special("h", tarfile.LNKTYPE, "s")],
        [special("h", tarfile.LNKTYPE, "h")],
    ],
    ids=["later-member", "directory", "symlink", "itself"],
)
def test_hard_links_only_to_earlier_regular_files(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> None:
    refused(tar_of(MAIN, *members), "not a regular file earlier in the archive")


@pytest.mark.parametrize(
    "members",
    [
        [special("lib", tarfile.SYMTYPE, "main.py"), ("lib/x.py", b"")],
        [("lib/x.py", b""), ("lib", b"a file where a directory is")],
        [("data.txt", b""), special("data.txt/inner", tarfile.DIRTYPE)],
    ],
    ids=["under-a-symlink", "directory-then-file", "under-a-file"],
)
def test_nothing_may_sit_inside_a_non_directory(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> None:
    refused(tar_of(MAIN, *members), "inside")


@pytest.mark.parametrize(
    "members",
    [
        [("x", b"1"), special("x", tarfile.SYMTYPE, "main.py")],
        [special("x", tarfile.SYMTYPE, "main.py"), ("x", b"1")],
        [special("x", tarfile.DIRTYPE), ("x", b"1")],
        [("x", b"1"), special("x", tarfile.LNKTYPE, "main.py")],
    ],
    ids=["file-then-symlink", "symlink-then-file", "dir-then-file", "file-then-hardlink"],
)
def test_a_name_keeps_one_kind(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> None:
    refused(tar_of(MAIN, *members), "appears twice")


def test_same_kind_duplicates_are_allowed() -> None:
    inspect(tar_of(MAIN, ("main.py", b"print(2)\n"), special("d", tarfile.DIRTYPE), special("d", tarfile.DIRTYPE)))


def test_a_declared_huge_file_is_refused_before_its_data_is_read() -> None:
    header = tarfile.TarInfo("huge.bin")
    header.size = 64 * 1024**3
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(tar_of(MAIN)[:1024] + header.tobuf())]
    parts += [packer.compress(bytes(1024 * 1024)) for _ in range(256)]
    bomb = b"".join(parts) + packer.flush()  # a gzip stream of about 256 KiB
    source = ReadCounter(bomb)
    with pytest.raises(ArtifactRejected, match="unpacks to more than .*at member 'huge.bin'"):
        inspect_archive(source, entrypoint="main.py", limits=LIMITS)
    assert source.total - len(bomb) < len(bomb) / 2


def header_bomb(members: int) -> bytes:
    """Zero-byte files, each behind a 60 KiB pax header: no declared size adds up, every header byte counts."""
    block = raw_header("././@PaxHeader", tarfile.XHDTYPE, pax_record("comment", "x" * (60 * 1024)))
    block += raw_header("f", tarfile.REGTYPE, b"")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream, built without holding what it inflates to
    parts = [packer.compress(tar_of(MAIN)[:1024])]
    parts += [packer.compress(block) for _ in range(members)]
    parts.append(packer.compress(bytes(1024)) + packer.flush())
    return b"".join(parts)


def test_a_bomb_of_headers_is_stopped_once_past_the_limit() -> None:
    bomb = header_bomb(3500)  # about 210 MiB once decompressed
    assert len(bomb) < 1024 * 1024
    source = ReadCounter(bomb)
    started = time.perf_counter()
    peak = peak_memory(lambda: inspect_archive(source, entrypoint="main.py", limits=LIMITS), "more than 1048576 bytes")
    assert time.perf_counter() - started < 2.0
    # Past the hashing pass (the whole file once), only what decompresses to about the limit was read.
    assert source.total - len(bomb) < len(bomb) / 2
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize(
    "kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK]
)
def test_a_one_mib_extended_header_is_refused(kind: bytes) -> None:
    data = pax_record("comment", "y" * 1024 * 1024) if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE) else b"n" * 2**20
    archive = with_main(raw_header("././@LongHeader", kind, data))
    big = ArtifactLimits(max_members=10, max_unpacked_bytes=64 * 1024 * 1024)
    message = refused(archive, "extended .* header of", limits=big)
    assert str(MAX_EXTENDED_HEADER_BYTES) in message


def test_an_extended_header_is_refused_without_being_read() -> None:
    archive = with_main(raw_header("././@PaxHeader", tarfile.XHDTYPE, pax_record("comment", "y" * 16 * 2**20)))
    source = io.BytesIO(archive)
    big = ArtifactLimits(max_members=10, max_unpacked_bytes=64 * 1024 * 1024)
    peak = peak_memory(lambda: inspect_archive(source, entrypoint="main.py", limits=big), "extended .* header of")
    assert peak < 3 * 1024 * 1024  # the 1 MiB hashing chunk, not the 16 MiB header


def test_the_header_written_by_tarfile_for_a_long_name_passes() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in (MAIN, ("d" * 200 + "/" + "f" * 200 + ".py", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "c" * 30_000}
            archive.addfile(info, io.BytesIO(data))
    inspect(buffer.getvalue())


def test_a_chain_of_extended_headers_is_refused() -> None:
    chain = b"".join(raw_header("././@PaxHeader", tarfile.XHDTYPE, pax_record("comment", "z")) for _ in range(50))
    refused(with_main(chain), "extended headers in a row")


def test_sparse_files_are_refused() -> None:
    old_gnu = raw_header("sparse.bin", tarfile.GNUTYPE_SPARSE, b"")
    refused(with_main(old_gnu), "sparse files are not supported")
    pax = pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0")
    pax += pax_record("GNU.sparse.name", "sparse.bin") + pax_record("GNU.sparse.realsize", "10")
    data = b"999999999\n" + bytes(502)
    v10 = raw_header("././@PaxHeader", tarfile.XHDTYPE, pax) + raw_header("sparse.bin", tarfile.REGTYPE, data)
    refused(with_main(v10), "sparse files are not supported")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("a/" * 600 + "x.py", "longer than 1024 bytes"), ("n" * 300 + ".py", "part longer than 255 bytes")],
)
def test_overlong_names_are_refused(name: str, fragment: str) -> None:
    refused(tar_of(MAIN, (name, b"")), fragment)


def test_a_file_as_the_archive_root_is_refused() -> None:
    refused(tar_of(MAIN, (".", b"x")), "only a directory may be the archive root")


async def test_unpacking_refuses_a_ladder_stored_before_the_rule(tmp_path: Path) -> None:
    dest = tmp_path / "programs" / "sha"
    started = time.perf_counter()
    with pytest.raises(ArtifactRejected, match="cannot unpack the artifact: .*symlinks to directories"):
        await unpack_artifact(symlink_ladder(24), dest, limits=LIMITS)
    assert time.perf_counter() - started < 2.0
    assert not dest.exists()
    assert list((tmp_path / "programs").iterdir()) == []


async def test_unpacking_counts_against_its_limits(tmp_path: Path) -> None:
    archive = tar_of(MAIN, ("big.bin", os.urandom(200_000)), gzip=True)
    with pytest.raises(ArtifactRejected, match="unpacks to more than 100000 bytes"):
        await unpack_artifact(archive, tmp_path / "sha", limits=ArtifactLimits(10, 100_000))
    assert list(tmp_path.iterdir()) == []
    await unpack_artifact(archive, tmp_path / "sha", limits=LIMITS)
    assert (tmp_path / "sha" / "big.bin").stat().st_size == 200_000


async def test_unpacking_keeps_hard_links_and_file_symlinks(tmp_path: Path) -> None:
    archive = tar_of(
        MAIN,
        ("pkg/a.py", b"A = 1\n"),
        special("pkg/b.py", tarfile.SYMTYPE, "a.py"),
        special("copy.py", tarfile.LNKTYPE, "pkg/a.py"),
        gzip=True,
    )
    dest = await unpack_artifact(archive, tmp_path / "sha", limits=LIMITS)
    assert os.readlink(dest / "pkg" / "b.py") == "a.py"
    assert (dest / "copy.py").read_bytes() == b"A = 1\n"
    assert (dest / "copy.py").stat().st_ino == (dest / "pkg" / "a.py").stat().st_ino
