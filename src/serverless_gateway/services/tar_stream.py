"""An untrusted tar archive read as one forward stream: decompressed bytes counted, extended headers capped.

Every byte tarfile reads after decompression (headers, pax records, file data it skips or extracts) passes
through `CountingReader`, which refuses the archive as soon as the total passes the limit, so a small archive
that decompresses to terabytes costs no more than the limit. Extended headers (pax, GNU long names) are read
into memory whole by tarfile: `CheckedTarInfo` refuses them over `MAX_EXTENDED_HEADER_BYTES`, refuses chains
of them, and refuses GNU sparse files (whose maps tarfile would read into memory without a bound).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, Protocol, cast

from ..errors import BadRequest

MAX_EXTENDED_HEADER_BYTES = 64 * 1024
MAX_EXTENDED_HEADERS_IN_A_ROW = 8
STREAM_BUFFER = 64 * 1024
_EXTENDED_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_SPARSE = "GNU sparse files are not supported in an artifact"


class ArtifactRejected(BadRequest):
    """The artifact is not a tar archive we accept; the message names the offending member."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class CountingReader:
    """A read-only forward stream that refuses (ArtifactRejected) to hand out more than `limit` bytes in total."""

    def __init__(self, source: _Readable, limit: int):
        self._source = source
        self._limit = limit
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        if size == 0:
            return b""
        want = self._limit + 1 - self.count if size < 0 else min(size, self._limit + 1 - self.count)
        data = self._source.read(max(want, 1))
        self.count += len(data)
        if self.count > self._limit:
            raise ArtifactRejected(f"the artifact unpacks to more than {self._limit} bytes (headers included)")
        return data

    def tell(self) -> int:
        return self.count

    def write(self, b: bytes, /) -> int:
        raise OSError("read-only stream")

    def seek(self, pos: int, /) -> int:
        raise OSError("forward-only stream")

    def close(self) -> None:
        return None


def _decompressed(fileobj: BinaryIO) -> _Readable:
    """The archive's tar bytes: gzip, bzip2 and xz are recognised by their magic numbers, anything else is plain."""
    start = fileobj.tell()
    head = fileobj.read(10)
    fileobj.seek(start)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    if head.startswith(b"BZh") and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return bz2.BZ2File(fileobj, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(fileobj, mode="rb", format=lzma.FORMAT_XZ)
    return fileobj


class CheckedTarInfo(tarfile.TarInfo):
    """tarfile's header parsing, refusing what it would otherwise read into memory without a bound."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        parent = cast(Any, super())
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise ArtifactRejected(f"{_SPARSE} ({self.name!r})")
        if self.type not in _EXTENDED_TYPES:
            return parent._proc_member(tarfile_)
        if self.size > MAX_EXTENDED_HEADER_BYTES:
            raise ArtifactRejected(
                f"the artifact has an extended (pax or GNU long name) header of {self.size} bytes; "
                f"the limit is {MAX_EXTENDED_HEADER_BYTES} bytes"
            )
        state = cast(Any, tarfile_)
        depth: int = getattr(state, "_gateway_extended_depth", 0)
        if depth >= MAX_EXTENDED_HEADERS_IN_A_ROW:
            limit = MAX_EXTENDED_HEADERS_IN_A_ROW
            raise ArtifactRejected(f"the artifact has more than {limit} extended headers in a row")
        state._gateway_extended_depth = depth + 1
        try:
            return parent._proc_member(tarfile_)
        finally:
            state._gateway_extended_depth = depth

    # tarfile calls these for the three pax flavours of sparse files (private hooks, stable since Python 3.2).
    def _proc_gnusparse_00(self, *_: object) -> None:
        raise ArtifactRejected(_SPARSE)

    def _proc_gnusparse_01(self, *_: object) -> None:
        raise ArtifactRejected(_SPARSE)

    def _proc_gnusparse_10(self, *_: object) -> None:
        raise ArtifactRejected(_SPARSE)


@contextmanager
def open_tar_stream(fileobj: BinaryIO, *, max_bytes: int) -> Iterator[tarfile.TarFile]:
    """The archive at `fileobj`'s start, opened for one forward pass with at most `max_bytes` decompressed."""
    fileobj.seek(0)
    decompressed = _decompressed(fileobj)
    counter = CountingReader(decompressed, max_bytes)
    try:
        with tarfile.open(
            fileobj=counter, mode="r|", tarinfo=CheckedTarInfo, bufsize=STREAM_BUFFER, encoding="utf-8"
        ) as archive:
            yield archive
    finally:
        if decompressed is not fileobj:
            cast(Any, decompressed).close()
