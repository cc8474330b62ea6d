"""A JSON text checked in one forward scan: linear time, memory bounded by its nesting depth, not by its size.

Runs of plain values (`1, "a", true, ...` in an array, `"k": 1, ...` in an object) are consumed by one
possessive regular expression at C speed, keeping no backtracking state; the Python loop only steps at
brackets, so its cost grows with the number of arrays and objects, which `max_containers` bounds. Nothing is
decoded: no Python object is built for any value. Python's NaN and infinities are accepted (Python writes
them) and reported, so the caller can store them as `null`.
"""

from __future__ import annotations

import asyncio
import json
import re
from array import array
from dataclasses import dataclass, field
from typing import Any

_WS = r"[ \t\n\r]*+"
_STRING = r'"[^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+"'
_NUMBER = r"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_PLAIN = rf"(?:{_STRING}|{_NUMBER}|true|false|null)"
_ARRAY_RUN = re.compile(rf"(?:{_WS}{_PLAIN}{_WS},)*+")
_OBJECT_RUN = re.compile(rf"(?:{_WS}{_STRING}{_WS}:{_WS}{_PLAIN}{_WS},)*+")
_VALUE = re.compile(rf"{_WS}(?:(?P<plain>{_PLAIN})|(?P<constant>NaN|-?Infinity)|(?P<open>[\[{{]))")
_KEY = re.compile(rf"{_WS}{_STRING}{_WS}:")
_NEXT = re.compile(rf"{_WS}([,\]}}])")
_END = re.compile(rf"{_WS}\Z")
_RAW_SURROGATE = re.compile("[\ud800-\udfff]")
_HIGH = r"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
# Both alternatives start with the literal `\u`, so the search skips ahead at C speed; a match preceded by an
# odd number of backslashes is not an escape (`\\ud800` is the text "\ud800") and is skipped.
_LONE_SURROGATE = re.compile(rf"{_HIGH}(?!{_LOW})|{_LOW}(?<!{_HIGH}{_LOW})")
_LONE_CHECKS = 10_000
_CLOSER = {"[": "]", "{": "}"}


class JsonRefused(ValueError):
    """The text is not JSON we keep; `reason` says why, for a person."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class JsonScan:
    """What a successful scan found: where Python's NaN and infinities are (start, end pairs)."""

    constants: array[int] = field(default_factory=lambda: array("q"))


def _invalid(what: str, pos: int) -> JsonRefused:
    return JsonRefused(f"not valid JSON ({what} at character {pos})")


def scan_json(text: str, *, max_depth: int, max_containers: int) -> JsonScan:
    """Check that `text` is one JSON value nesting at most `max_depth` deep; JsonRefused otherwise."""
    if _RAW_SURROGATE.search(text):
        raise JsonRefused("holds a lone Unicode surrogate, which is not valid text")
    found = JsonScan()
    stack: list[str] = []
    pos, containers = 0, 0
    expect = "value"  # or "key" (in an object) or "next" (after a value)
    while True:
        if expect == "next":
            if not stack:
                if _END.match(text, pos) is None:
                    raise _invalid("extra data after the value", pos)
                break
            match = _NEXT.match(text, pos)
            if match is None:
                raise _invalid("expected ',' or a closing bracket", pos)
            pos = match.end()
            mark = match.group(1)
            if mark == ",":
                expect = "value" if stack[-1] == "[" else "key"
            elif mark != _CLOSER[stack.pop()]:
                raise _invalid(f"mismatched {mark!r}", pos - 1)
            continue
        if expect == "key":
            pos = _OBJECT_RUN.match(text, pos).end()  # type: ignore[union-attr]  # `*+` always matches
            match = _KEY.match(text, pos)
            if match is None:
                raise _invalid("expected a string key and ':'", pos)
            pos, expect = match.end(), "value"
        elif stack and stack[-1] == "[":
            pos = _ARRAY_RUN.match(text, pos).end()  # type: ignore[union-attr]
        match = _VALUE.match(text, pos)
        if match is None:
            raise _invalid("expected a value", pos)
        pos = match.end()
        opened = match.group("open")
        if opened is None:
            if match.group("constant") is not None:
                found.constants.extend((match.start("constant"), pos))
            expect = "next"
            continue
        stack.append(opened)
        containers += 1
        if containers > max_containers:
            raise JsonRefused(f"more than {max_containers} arrays and objects to check")
        if len(stack) > max_depth:
            raise JsonRefused(f"nested more than {max_depth} levels deep")
        closing = _NEXT.match(text, pos)
        if closing is not None and closing.group(1) == _CLOSER[opened]:  # an empty array or object
            stack.pop()
            pos, expect = closing.end(), "next"
        else:
            expect = "key" if opened == "{" else "value"
    if _has_lone_surrogate_escape(text):
        raise JsonRefused("holds a lone Unicode surrogate, which is not valid text")
    return found


def _has_lone_surrogate_escape(text: str) -> bool:
    """Best effort (a lone escaped surrogate cannot hurt the gateway, which never decodes a result)."""
    for checked, match in enumerate(_LONE_SURROGATE.finditer(text)):
        if checked >= _LONE_CHECKS:
            return False
        before = text[max(0, match.start() - 64) : match.start()]
        if (len(before) - len(before.rstrip("\\"))) % 2 == 0:  # the match's backslash is not itself escaped
            return True
    return False


def with_nulls(text: str, constants: array[int]) -> str:
    """`text` with the NaN and infinities `scan_json` found replaced by `null`, built in bounded blocks."""
    blocks: list[str] = []
    pieces: list[str] = []
    last = 0
    for index in range(0, len(constants), 2):
        pieces += (text[last : constants[index]], "null")
        last = constants[index + 1]
        if len(pieces) >= 4096:
            blocks.append("".join(pieces))
            pieces.clear()
    pieces.append(text[last:])
    blocks.append("".join(pieces))
    return "".join(blocks)


DECODE_ON_LOOP_BYTES = 256 * 1024
"""JSON up to this size is decoded where it is; a bigger text (tens of MiB take a second) in a worker thread."""


async def loads_off_loop(data: bytes | str) -> Any:
    """`json.loads`, in a worker thread when `data` is big enough to hold up the event loop."""
    if len(data) <= DECODE_ON_LOOP_BYTES:
        return json.loads(data)
    return await asyncio.to_thread(json.loads, data)
