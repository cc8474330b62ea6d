"""Argument schemas: RE2 for every regex keyword, bounded schemas, validation off the event loop."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from serverless_gateway.errors import ValidationFailed
from serverless_gateway.services.argument_schemas import (
    MAX_SCHEMA_DEPTH,
    check_arguments,
    check_arguments_off_loop,
    check_schema_document,
)

EVIL = "^(a+)+$"
ATTACK = "a" * 34 + "!"


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema)


def test_a_catastrophic_pattern_is_answered_at_once() -> None:
    schema = schema_text({"properties": {"s": {"type": "string", "pattern": EVIL}}})
    started = time.monotonic()
    with pytest.raises(ValidationFailed, match="does not match"):
        check_arguments(schema, {"s": ATTACK})
    check_arguments(schema, {"s": "a" * 34})
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "schema",
    [
        {"patternProperties": {EVIL: {"type": "integer"}}, "additionalProperties": False},
        {"patternProperties": {EVIL: {"type": "integer"}}},
        {"properties": {"x": {}}, "patternProperties": {EVIL: {}}, "additionalProperties": {"type": "integer"}},
    ],
)
def test_pattern_properties_and_additional_properties_use_re2(schema: dict[str, Any]) -> None:
    started = time.monotonic()
    with pytest.raises(ValidationFailed):
        check_arguments(schema_text(schema), {ATTACK: "not an integer", "a": "nor this"})
    assert time.monotonic() - started < 0.5


def test_regex_keywords_keep_their_meaning() -> None:
    schema = schema_text(
        {
            "properties": {"name": {"type": "string", "pattern": "^[a-z]+\\d?$"}},
            "patternProperties": {"^x-": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    check_arguments(schema, {"name": "abc1", "x-count": 3})
    with pytest.raises(ValidationFailed, match="does not match"):
        check_arguments(schema, {"name": "ABC"})
    with pytest.raises(ValidationFailed, match="x-count"):
        check_arguments(schema, {"x-count": "three"})
    with pytest.raises(ValidationFailed, match="do not match any of the regexes"):
        check_arguments(schema, {"other": 1})
    closed = schema_text({"properties": {"a": {}}, "additionalProperties": False})
    with pytest.raises(ValidationFailed, match="Additional properties are not allowed"):
        check_arguments(closed, {"b": 1})


@pytest.mark.parametrize("pattern", ["(a)\\1", "(?=a)b", "(?<!a)b", "[z-a]"])
def test_patterns_re2_cannot_run_are_refused(pattern: str) -> None:
    for schema in ({"pattern": pattern}, {"patternProperties": {pattern: {}}}):
        with pytest.raises(ValidationFailed, match="not supported"):
            check_schema_document(schema)


def test_a_pattern_inside_data_keywords_is_data() -> None:
    check_schema_document({"enum": [{"pattern": "(a)\\1"}], "default": {"pattern": "(?=x)"}})


def test_deep_schemas_are_refused() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH):
        schema = {"properties": {"x": schema}}
    with pytest.raises(ValidationFailed, match="nested deeper"):
        check_schema_document(schema)


def test_unevaluated_properties_with_pattern_properties_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="unevaluatedProperties"):
        check_schema_document({"patternProperties": {"^a": {}}, "unevaluatedProperties": False})


async def test_validation_runs_off_the_loop() -> None:
    schema = schema_text({"properties": {"s": {"pattern": EVIL}}})
    with pytest.raises(ValidationFailed):
        await check_arguments_off_loop(schema, {"s": ATTACK})
    await check_arguments_off_loop(None, {"anything": 1})
