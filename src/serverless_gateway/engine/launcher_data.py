"""The launcher's DATA_PATH sync through the files API (standard library only; shipped beside the launcher).

Before the entrypoint, the function's files are downloaded into DATA_PATH (the names come with the job's
bootstrap answer, so a job without files makes no call for them); after it, the top-level regular files the job
created or changed there are uploaded back.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator

from .launcher_http import answer_text, exchange, say

_COPY_CHUNK = 1024 * 1024
FileState = tuple[int, int]
"""(size, mtime in ns) of a file of DATA_PATH, to tell which ones the job created or changed."""


class SyncError(OSError):
    """The gateway refused a files API call: its status and the start of its answer."""

    def __init__(self, status: int, detail: bytes):
        self.status = status
        super().__init__(f"{status} {answer_text(detail)}")


class DataSync:
    """Copies the function's files between the gateway's files API and a local DATA_PATH directory."""

    def __init__(
        self,
        *,
        host: str,
        token: str,
        function: str,
        provider: str,
        data_path: str,
        remote: list[str] | None = None,
    ) -> None:
        self.host = host.rstrip("/")
        self.token = token
        self.function = function
        self.provider = provider
        self.data_path = data_path
        self.remote = remote
        """The function's file names when the bootstrap answer gave them (else they are listed on pull)."""
        self.fetched: dict[str, FileState] = {}

    @classmethod
    def from_env(cls, remote: list[str] | None = None) -> DataSync | None:
        """A DataSync when the launcher must sync DATA_PATH (GATEWAY_DATA_SYNC=1), else None."""
        if os.environ.get("GATEWAY_DATA_SYNC") != "1":
            return None
        host = os.environ.get("ENV_JOB_GATEWAY_HOST", "")
        token = os.environ.get("ENV_JOB_GATEWAY_TOKEN", "")
        function = os.environ.get("GATEWAY_DATA_FUNCTION", "")
        if not (host and token and function):
            return None
        provider = os.environ.get("GATEWAY_DATA_PROVIDER", "")
        data_path = os.environ["DATA_PATH"]
        return cls(host=host, token=token, function=function, provider=provider, data_path=data_path, remote=remote)

    def _url(self, action: str, **extra: str) -> str:
        import urllib.parse  # only a job with files to sync pays for it (a few ms)

        query = {"function": self.function, **({"provider": self.provider} if self.provider else {}), **extra}
        return f"{self.host}/api/v1/files/{action}?{urllib.parse.urlencode(query)}"

    def _state(self, name: str) -> FileState:
        info = os.stat(os.path.join(self.data_path, name))
        return info.st_size, info.st_mtime_ns

    def list_remote(self) -> list[str]:
        status, answer = exchange("GET", self._url(""), self.token, timeout=60)
        if not 200 <= status < 300:
            raise SyncError(status, answer)
        return [str(name) for name in json.loads(answer)["files"]]

    def pull(self) -> None:
        """Download every file of the function into DATA_PATH."""
        names = self.remote if self.remote is not None else self.list_remote()
        for name in names:
            if name in ("", ".", "..") or "/" in name or "\\" in name:
                continue
            target = os.path.join(self.data_path, name)
            partial = target + ".gateway-part"
            try:
                with open(partial, "wb") as out:
                    url = self._url("download/", file=name)
                    status, answer = exchange("GET", url, self.token, timeout=60, sink=out)
                if not 200 <= status < 300:
                    raise SyncError(status, answer)
            except BaseException:
                os.unlink(partial)  # a cut-off download leaves nothing behind
                raise
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
                if remaining:  # it shrank meanwhile: the connection is dropped mid-body
                    raise OSError(f"{name!r} shrank while it was sent")
            yield tail

        with handle:
            status, answer = exchange(
                "POST",
                self._url("upload/"),
                self.token,
                body=body(),
                length=len(head) + size + len(tail),
                content_type=f"multipart/form-data; boundary={boundary}",
                timeout=300,
            )
        if not 200 <= status < 300:
            raise SyncError(status, answer)

    def push(self) -> int:
        """Upload the new and changed files; returns how many failed."""
        failed = 0
        for name in self.changed():
            try:
                self.upload(name)
            except OSError as exc:
                failed += 1
                say(f"could not save DATA_PATH file {name!r} to the function's files: {exc}")
        return failed
