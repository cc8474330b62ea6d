"""Turning Ray's log text into the stored job log: the result fallback line taken out, the size capped to the tail."""

from __future__ import annotations

import asyncio
import json
import uuid

from .launcher import RESULT_MARKER

LOGS_PREFIX = "logs/"


def logs_key(job_id: object) -> str:
    """A fresh key for a job's stored logs: a writer that loses the race to finish the job (another replica,
    a late pass) leaves an object nothing references (collected later), never overwrites the winner's."""
    return f"{LOGS_PREFIX}{job_id}/{uuid.uuid4().hex}.log"


def extract_result(raw: str) -> tuple[str, str | None]:
    """Remove the launcher's result fallback line (printed when the gateway was unreachable); return it decoded."""
    if RESULT_MARKER not in raw:
        return raw, None
    kept: list[str] = []
    result: str | None = None
    for line in raw.splitlines(keepends=True):
        if line.startswith(RESULT_MARKER):
            try:
                decoded = json.loads(line[len(RESULT_MARKER) :].strip())
            except ValueError:
                decoded = None
            if isinstance(decoded, str):
                result = decoded
            continue
        kept.append(line)
    return "".join(kept), result


def cap_tail(text: str, max_bytes: int) -> str:
    """Keep the last `max_bytes` bytes of the log, with a note saying how much was dropped."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return text
    tail = data[len(data) - max_bytes :]
    newline = tail.find(b"\n")
    if 0 <= newline < 4096:
        tail = tail[newline + 1 :]
    dropped = len(data) - len(tail)
    note = f"[gateway] logs truncated: the first {dropped} bytes were dropped (limit {max_bytes} bytes)\n"
    return note + tail.decode("utf-8", errors="replace")


def first_line(message: str | None, limit: int = 1000) -> str | None:
    if not message:
        return None
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line[:limit] or None


_LOG_TAIL_NOTE = ", last available logs"
_SUMMARY_SCAN_LINES = 60


def _telling_line(text: str) -> str | None:
    """The line that says what went wrong: pip's last `ERROR:` line, else the last line (an exception's)."""
    lines = [line.strip() for line in text.strip().splitlines()[-_SUMMARY_SCAN_LINES:]]
    lines = [line for line in lines if line and not line.startswith("[gateway]")]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else None


def failure_summary(ray_message: str | None, logs: str, limit: int = 1000) -> str | None:
    """One line for a failed job: Ray's reason and what the job (or pip) said last.

    `Job entrypoint command failed with exit code 1: ValueError: boom`, or
    `runtime_env setup failed: ...: ERROR: No matching distribution found for left-pad==9.9`.
    """
    head = first_line(ray_message, limit)
    if head is None:
        return None
    rest = ray_message.strip().split("\n", 1)[1] if ray_message and "\n" in ray_message.strip() else ""
    if _LOG_TAIL_NOTE in head:
        # Ray appends the log tail, which the job's logs already hold: take the telling line from the logs.
        head = head.split(_LOG_TAIL_NOTE, 1)[0]
        rest = logs
    detail = _telling_line(rest) if rest else None
    if detail and detail not in head:
        head = head.rstrip(": ")
        head = f"{head} {detail}" if head.endswith(".") else f"{head}: {detail}"
    return head[:limit]


# Bigger log texts are processed in a worker thread so the event loop never stalls on them.
_INLINE_BYTES = 256 * 1024


async def prepare_logs(raw: str, max_bytes: int, *, footer: str = "") -> tuple[str, str | None]:
    """The log text to keep (result line removed, footer added, capped) and the fallback result, if any."""

    def prepare() -> tuple[str, str | None]:
        text, result = extract_result(raw)
        return cap_tail(text + footer, max_bytes), result

    if len(raw) <= _INLINE_BYTES:
        return prepare()
    return await asyncio.to_thread(prepare)
