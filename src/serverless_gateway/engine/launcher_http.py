"""The launcher's HTTP client (standard library only; shipped beside it in the job's launcher package).

Neither urllib.request nor http.client: importing them (email's parser, ssl) costs 25-45 ms, which every job
would pay before its entrypoint starts, and the launcher's calls need none of what they offer. Each call is one
HTTP/1.0 exchange over a socket: without keep-alive the answer is neither chunked nor followed by another, so it
is read to the end of the connection and checked against its Content-Length. https is spoken with ssl's default
context (imported only then); proxy variables are not used: the gateway is reached directly.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable
from typing import BinaryIO

MAX_HEAD_BYTES = 64 * 1024
"""An answer whose status line and headers are longer than this is not the gateway's."""
_RECV = 65536


def say(message: str) -> None:
    """A line of the launcher's own in the job's log."""
    sys.stderr.write(f"[gateway] {message}\n")
    sys.stderr.flush()


def exchange(
    method: str,
    url: str,
    token: str,
    *,
    body: Iterable[bytes] = (),
    length: int = 0,
    content_type: str = "application/json",
    timeout: float,
    sink: BinaryIO | None = None,
) -> tuple[int, bytes]:
    """One request with the bearer token: (status, the answer's body).

    `body` yields exactly `length` bytes (streamed, never joined). With `sink`, a 2xx answer's body is written
    there as it arrives instead of being returned; an error answer is always returned. OSError when the answer
    is not HTTP or stops before its Content-Length.
    """
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host, port = _host_port(authority, 443 if scheme == "https" else 80)
    head = f"{method} {slash}{path} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n"
    if method in ("POST", "PUT") or length:
        head += f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
    connection = socket.create_connection((host, port), timeout=timeout)
    try:
        if scheme == "https":
            import ssl

            connection = ssl.create_default_context().wrap_socket(connection, server_hostname=host)
        connection.sendall(f"{head}\r\n".encode("latin-1"))
        for chunk in body:
            connection.sendall(chunk)
        return _read_answer(connection, sink)
    finally:
        connection.close()


def _read_answer(connection: socket.socket, sink: BinaryIO | None) -> tuple[int, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = connection.recv(_RECV)
        if not chunk or len(buffer) > MAX_HEAD_BYTES:
            raise OSError("the gateway's answer is not HTTP, or was cut off")
        buffer += chunk
    head, _, first = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise OSError("the gateway's answer is not HTTP, or was cut off")
    status = int(status_line[1])
    expected = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            expected = int(value)
    kept: list[bytes] = []
    write = sink.write if sink is not None and 200 <= status < 300 else kept.append
    write(first)
    received = len(first)
    while chunk := connection.recv(_RECV):
        received += len(chunk)
        write(chunk)
    if expected is not None and received < expected:
        raise OSError("the gateway's answer was cut off")
    return status, b"".join(kept)


def answer_text(answer: bytes) -> str:
    """The start of an error answer, for a line in the job's log."""
    return answer[:2000].decode("utf-8", errors="replace")


def post_json(url: str, token: str, body: bytes, *, timeout: float) -> tuple[int, bytes]:
    """POST a JSON body with the bearer token: (status, the answer's body)."""
    return exchange("POST", url, token, body=(body,), length=len(body), timeout=timeout)


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    """`host[:port]` or `[v6 address][:port]` as (host, port)."""
    if authority.startswith("["):
        host, _, after = authority[1:].partition("]")
        port = after.removeprefix(":")
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    return host, int(port) if port else default_port
