"""Log set-up: JSON or text lines for the gateway's and uvicorn's loggers, with the bound context fields."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from serverless_gateway.log_config import configure_logging, log_context


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("serverless_gateway", "uvicorn", "uvicorn.error", "uvicorn.access")
    levels = {name: (logging.getLogger(name).level, logging.getLogger(name).disabled) for name in names}
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, (level, disabled) in levels.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).disabled = disabled


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_cover_uvicorn_and_carry_the_context() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    with log_context(job_id="j-1", tenant="alice"):
        logging.getLogger("serverless_gateway.engine.sync").warning("job %s lost", "j-1")
        with log_context(tenant=None, request_id="r-9"):
            logging.getLogger("serverless_gateway.x").info("nested")
    logging.getLogger("serverless_gateway.x").debug("below the level")
    logging.getLogger("uvicorn.access").info("never: the middleware logs requests")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("serverless_gateway.x").exception("failed")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in entries] == ["Started server process [42]", "job j-1 lost", "nested", "failed"]
    assert entries[0]["logger"] == "uvicorn.error"
    assert "job_id" not in entries[0]
    assert entries[1]["job_id"] == "j-1"
    assert entries[1]["tenant"] == "alice"
    assert entries[1]["level"] == "WARNING"
    assert entries[2] == {**entries[2], "job_id": "j-1", "tenant": "alice", "request_id": "r-9"}
    assert "ValueError: boom" in entries[3]["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_end_with_the_context_fields() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream)
    with log_context(job_id="j-2"):
        logging.getLogger("serverless_gateway.y").debug("hello")
    line = stream.getvalue().strip()
    assert line.endswith("DEBUG serverless_gateway.y: hello job_id=j-2")


@pytest.mark.usefixtures("restore_logging")
async def test_tasks_started_in_a_context_keep_it() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)

    async def work() -> None:
        await asyncio.sleep(0)
        logging.getLogger("serverless_gateway.engine").info("in a task")

    with log_context(job_id="j-3", tenant="t"):
        task = asyncio.create_task(work())
    logging.getLogger("serverless_gateway.engine").info("outside")
    await task
    entries = {e["message"]: e for e in map(json.loads, stream.getvalue().splitlines())}
    assert entries["in a task"]["job_id"] == "j-3"
    assert "job_id" not in entries["outside"]


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", "text", io.StringIO())
