"""Programs' argument schemas: bounded at upload, and applied with a linear-time regex engine off the event loop."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

import re2
from jsonschema import SchemaError, ValidationError, exceptions, validators
from jsonschema.protocols import Validator

from ..errors import BadRequest, ErrorDetail, ValidationFailed

MAX_SCHEMA_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_PATTERNS = 64
"""Regular expressions one schema may hold (each compiled RE2 program can take up to its max_mem)."""
MAX_CONCURRENT_VALIDATIONS = 4
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose values are instances, not schemas: a `pattern` key inside them is data."""

validation_slots = asyncio.Semaphore(MAX_CONCURRENT_VALIDATIONS)


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 1024 * 1024  # a pattern that needs more is refused at upload
    return options


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: str) -> Any:
    """A user's regular expression compiled by RE2 (linear time); re2.error when RE2 cannot take it."""
    return re2.compile(pattern, _options())


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid request: arguments_schema: {message}", [ErrorDetail(loc=["body", "arguments_schema"], msg=message)]
    )


def _check_pattern(pattern: object) -> None:
    if not isinstance(pattern, str):
        return  # the metaschema check names the wrong type
    try:
        compile_pattern(pattern)
    except re2.error:
        raise _invalid(
            f"the pattern {pattern[:200]!r} is not supported: patterns run on RE2 "
            "(no backreferences or lookaround)"
        ) from None


def _walk(node: object, depth: int) -> Iterator[tuple[str, object]]:
    """Every (keyword, value) of the schema, refusing nesting deeper than MAX_SCHEMA_DEPTH."""
    if depth > MAX_SCHEMA_DEPTH:
        raise _invalid(f"nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, depth + 1)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            if key not in _DATA_KEYWORDS:
                yield from _walk(value, depth + 1)


def check_schema_document(schema: dict[str, Any] | bool) -> None:
    """400 unless the (decoded, at most MAX_SCHEMA_BYTES) schema is shallow, valid, and all its regexes run on RE2."""
    keywords: set[str] = set()
    patterns: list[object] = []
    for key, value in _walk(schema, 0):
        keywords.add(key)
        if key == "pattern":
            patterns.append(value)
        elif key == "patternProperties" and isinstance(value, dict):
            patterns.extend(value)
        if len(patterns) > MAX_SCHEMA_PATTERNS:
            raise _invalid(f"at most {MAX_SCHEMA_PATTERNS} regular expressions (pattern, patternProperties)")
    for pattern in patterns:
        _check_pattern(pattern)
    if "patternProperties" in keywords and "unevaluatedProperties" in keywords:
        raise _invalid("unevaluatedProperties cannot be combined with patternProperties on this gateway")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise _invalid(f"not a valid JSON Schema: {exc.message}") from None


def _matches(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


def _pattern(validator: Validator, pattern: str, instance: object, schema: Mapping[str, Any]) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _matches(pattern, str(instance)):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Validator, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = sorted(
        (key for key in instance if key not in declared and not any(_matches(p, key) for p in patterns)), key=str
    )
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(repr(extra) for extra in extras)
        if patterns:
            yield ValidationError(f"{names} do not match any of the regexes: {', '.join(map(repr, sorted(patterns)))}")
        else:
            yield ValidationError(f"Additional properties are not allowed ({names} unexpected)")


@functools.lru_cache(maxsize=16)
def _safe_class(base: type[Validator]) -> type[Validator]:
    """The draft's validator with every regex keyword answered by RE2 instead of Python's backtracking `re`."""
    extended: type[Validator] = validators.extend(
        base,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        },
    )
    return extended


@functools.lru_cache(maxsize=512)
def _validator(schema_text: str) -> Validator:
    schema = json.loads(schema_text)
    validator: Validator = _safe_class(validators.validator_for(schema))(schema)
    return validator


def check_arguments(schema_text: str | None, arguments: dict[str, Any]) -> None:
    """400 naming the first (most relevant) mismatch when the arguments do not satisfy the program's schema."""
    if not schema_text:
        return
    try:
        error = exceptions.best_match(_validator(schema_text).iter_errors(arguments))
    except Exception as exc:  # a stored schema can still fail when applied (an unresolvable remote $ref, say)
        raise BadRequest(f"the program's arguments schema cannot be applied: {str(exc)[:500]}") from None
    if error is None:
        return
    where = error.json_path if error.absolute_path else "arguments"
    message = f"arguments do not match the program's schema: {where}: {error.message[:1000]}"
    detail = ErrorDetail(loc=["body", "arguments", *error.absolute_path], msg=error.message[:1000])
    raise ValidationFailed(message, [detail])


async def check_arguments_off_loop(schema_text: str | None, arguments: dict[str, Any]) -> None:
    """`check_arguments` in a worker thread, a few at a time, so the event loop keeps answering meanwhile."""
    if not schema_text:
        return
    async with validation_slots:
        await asyncio.to_thread(check_arguments, schema_text, arguments)
