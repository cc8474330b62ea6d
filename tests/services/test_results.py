"""The result check: exact JSON, bounded nesting at C speed, NaN rewritten, lone surrogates refused."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from serverless_gateway.errors import BadRequest, PayloadTooLarge
from serverless_gateway.services import results
from serverless_gateway.services.results import MAX_JSON_DEPTH, check_result_text, result_text


@pytest.mark.parametrize(
    "text",
    [
        "0",
        '"plain"',
        '{"b": 1,  "a": [1.0, 2e3, -0, true, false, null]}',
        '{"": {"": [[], {}]}}',
        '["\\"]\\\\", "[[[[", "{\\u005b", "é漢😀", "\\ud83d\\ude00", "\\\\ud800"]',
        " [1 ,\t2 ]\n",
        "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
    ],
)
def test_valid_results_are_kept_exactly(text: str) -> None:
    assert check_result_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "][",
        "[1,]",
        '{"a" 1}',
        '{"a": 1,}',
        "[1}",
        '{1: 2}',
        '"tab\tinside"',
        '"bad \\x escape"',
        '["unterminated]',
        "[] []",
        "'single'",
        '{"a": 1, 2}',
    ],
)
def test_invalid_json_is_refused(text: str) -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        check_result_text(text)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000, 3_000_000])
def test_deep_nesting_is_refused_fast(depth: int) -> None:
    for text in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth, "[" * depth):
        started = time.perf_counter()
        with pytest.raises(BadRequest, match=f"nested more than {MAX_JSON_DEPTH} levels deep"):
            check_result_text(text)
        assert time.perf_counter() - started < 2.0


def test_nesting_inside_strings_is_only_text() -> None:
    text = json.dumps(["[" * 10_000, "{" * 10_000])
    assert check_result_text(text) == text


def test_depth_hovering_near_the_limit_is_measured_exactly() -> None:
    near = "[" * 90 + "]" * 90
    assert check_result_text("[" + ",".join([near] * 2000) + "]") .startswith("[[")
    over = "[" * 50 + "[" * 51 + "]" * 51 + "]" * 50
    with pytest.raises(BadRequest, match="nested more than"):
        check_result_text("[" + ",".join([near] * 2000 + [over]) + "]")


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ('{"x": NaN, "y": [Infinity, -Infinity]}', '{"x": null, "y": [null, null]}'),
        ('["NaN", "Infinity", NaN]', '["NaN", "Infinity", null]'),
        ('{"NaN": "a\\"NaN"}', '{"NaN": "a\\"NaN"}'),
    ],
)
def test_nan_and_infinities_are_stored_as_null(text: str, stored: str) -> None:
    assert check_result_text(text) == stored
    json.loads(stored, parse_constant=lambda name: pytest.fail(f"{name} left in {stored}"))


@pytest.mark.parametrize(
    "text",
    ['"\\ud800"', '"\\udc00"', '"\\ud800\\ud800\\udc00"', '"\\ud800\\\\\\udc00"', '{"\\udfff": 1}', '"\ud800"'],
)
def test_lone_surrogates_are_refused(text: str) -> None:
    with pytest.raises(BadRequest, match="lone Unicode surrogate"):
        check_result_text(text)


async def test_the_size_is_checked_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "check_result_text", lambda _: pytest.fail("checked past the limit"))
    with pytest.raises(PayloadTooLarge, match="limit of 10 bytes"):
        await result_text("[" * 11, max_bytes=10)
    with pytest.raises(PayloadTooLarge):
        await result_text('"éééééé"', max_bytes=10)  # 8 characters, 14 bytes
    with pytest.raises(PayloadTooLarge):
        await result_text({"a": "b" * 20}, max_bytes=10)


async def test_values_already_decoded_are_encoded_once() -> None:
    assert await result_text({"as": ["object"], "n": float("nan")}, max_bytes=1000) == '{"as": ["object"], "n": null}'
    deep: list[object] = []
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(BadRequest, match="nested more than"):
        await result_text(deep, max_bytes=10_000)


def test_the_work_of_a_check_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "MAX_CHECK_CONTAINERS", 100_000)
    text = "[" + ",".join(["[]"] * 200_000) + "]"
    started = time.perf_counter()
    with pytest.raises(BadRequest, match="more than 100000 arrays and objects"):
        check_result_text(text)
    assert time.perf_counter() - started < 2.0
    check_result_text("[" + ",".join(["{}"] * 99_998) + "]")


def test_checking_a_large_result_holds_little_beyond_its_text() -> None:
    text = json.dumps({"rows": [{"name": f"row {i}", "values": [i, i / 3, "x" * 20]} for i in range(50_000)]})
    tracemalloc.start()
    try:
        check_result_text(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # decoding it would take several times its size


def test_a_large_flat_result_is_checked_quickly_in_little_memory() -> None:
    text = json.dumps([i / 7 for i in range(500_000)] + ["é漢😀" * 3] * 100_000)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        check_result_text(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5.0
    # tracemalloc counts every thread's allocations (threads of earlier tests too): the bound is far below the
    # text's 12 MB and the ~100 MB a parsed copy takes, not an exact figure for the checker alone.
    assert peak < 1024 * 1024
