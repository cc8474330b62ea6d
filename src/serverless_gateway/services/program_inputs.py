"""Parsing and checking what clients send about programs: titles, dependencies, env vars, schemas, arguments."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from jsonschema import SchemaError, exceptions, validators
from jsonschema.protocols import Validator
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import BadRequest, ErrorDetail, ValidationFailed
from ..models import ProgramType

_TITLE = re.compile(r"^[^/\x00-\x1f\x7f\ud800-\udfff]{1,255}$")
PROVIDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,149}$"
_PROVIDER = re.compile(PROVIDER_PATTERN)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
MAX_DEPENDENCIES = 200
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 32 * 1024
MAX_DESCRIPTION = 10_000
MAX_VERSION = 64


def invalid(field: str, message: str) -> ValidationFailed:
    """A 400 naming the field at fault, shaped like the framework's own validation errors."""
    return ValidationFailed(f"Invalid request: {field}: {message}", [ErrorDetail(loc=["body", field], msg=message)])


def split_title(title: str, provider: str | None) -> tuple[str | None, str]:
    """`provider/title` or (`provider`, `title`) -> (provider or None, title); 400 when malformed or conflicting."""
    provider = provider or None
    if "/" in title:
        head, _, tail = title.partition("/")
        if not head or "/" in tail:
            raise invalid("title", "use 'title' or 'provider/title' (at most one slash)")
        if provider is not None and provider != head:
            raise invalid("provider", f"the title names provider {head!r} but the provider field says {provider!r}")
        provider, title = head, tail
    if not _TITLE.fullmatch(title):
        raise invalid("title", "must be 1 to 255 characters, without '/' or control characters")
    if provider is not None and not _PROVIDER.fullmatch(provider):
        raise invalid("provider", "not a valid provider name")
    return provider, title


def _encodable(text: str) -> bool:
    """PostgreSQL stores UTF-8 without NUL: refuse what it would reject (lone surrogates, NUL)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def parse_dependencies(values: list[str] | None, allowlist: list[str] | None) -> list[str] | None:
    """Dependencies as one JSON-list string or repeated fields; each a PEP 508 requirement. None: not sent."""
    if values is None:
        return None
    items: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise invalid("dependencies", f"not a valid JSON list ({exc.msg})") from None
            if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
                raise invalid("dependencies", "must be a JSON list of strings")
            items.extend(item.strip() for item in parsed)
        elif text:
            items.append(text)
    if len(items) > MAX_DEPENDENCIES:
        raise invalid("dependencies", f"at most {MAX_DEPENDENCIES} dependencies")
    allowed = {canonicalize_name(name) for name in allowlist} if allowlist is not None else None
    for item in items:
        try:
            requirement = Requirement(item)
        except InvalidRequirement as exc:
            raise invalid("dependencies", f"{item!r} is not a valid requirement: {exc}") from None
        if allowed is not None and canonicalize_name(requirement.name) not in allowed:
            raise invalid("dependencies", f"{requirement.name!r} is not an allowed dependency on this gateway")
    return items


def parse_env_vars(raw: str | None) -> dict[str, str] | None:
    """A JSON object of variable name -> string value. None: not sent."""
    if raw is None:
        return None
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid("env_vars", f"not valid JSON ({exc.msg})") from None
    if not isinstance(parsed, dict):
        raise invalid("env_vars", "must be a JSON object of names to string values")
    if len(parsed) > MAX_ENV_VARS:
        raise invalid("env_vars", f"at most {MAX_ENV_VARS} variables")
    for name, value in parsed.items():
        if not _ENV_NAME.fullmatch(name):
            raise invalid("env_vars", f"{name!r} is not a valid environment variable name")
        if not isinstance(value, str):
            raise invalid("env_vars", f"the value of {name!r} must be a string")
        if len(value) > MAX_ENV_VALUE or not _encodable(value):
            raise invalid("env_vars", f"the value of {name!r} is too long or holds a NUL or invalid character")
    return parsed


def parse_type(raw: str | None) -> ProgramType | None:
    if raw is None:
        return None
    try:
        return ProgramType(raw.strip().upper())
    except ValueError:
        allowed = ", ".join(t.value for t in ProgramType)
        raise invalid("type", f"must be one of {allowed}") from None


def check_text(field: str, raw: str | None, max_length: int) -> str | None:
    if raw is not None and (len(raw) > max_length or not _encodable(raw)):
        raise invalid(field, f"at most {max_length} characters, no NUL or invalid characters")
    return raw


def parse_arguments_schema(raw: str | None) -> tuple[bool, str | None]:
    """(sent, stored text): `{}` or an empty string removes the schema; anything else must be a JSON Schema."""
    if raw is None:
        return False, None
    if not raw.strip():
        return True, None
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid("arguments_schema", f"not valid JSON ({exc.msg})") from None
    if schema == {}:
        return True, None
    if not isinstance(schema, (dict, bool)):
        raise invalid("arguments_schema", "a JSON Schema is an object or a boolean")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise invalid("arguments_schema", f"not a valid JSON Schema: {exc.message}") from None
    return True, json.dumps(schema, separators=(",", ":"))


def decode_schema(text: str | None) -> dict[str, Any] | bool | None:
    if not text:
        return None
    value = json.loads(text)
    return value if isinstance(value, (dict, bool)) and value != {} else None


def parse_arguments(value: dict[str, Any] | str | None) -> tuple[str, dict[str, Any]]:
    """Run arguments as (the JSON text stored on the job, the decoded object)."""
    if value is None:
        return "{}", {}
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")), value
    text = value.strip() or "{}"
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid("arguments", f"not valid JSON ({exc.msg})") from None
    if decoded is None:
        return "{}", {}
    if not isinstance(decoded, dict):
        raise invalid("arguments", "must be a JSON object")
    if not _encodable(text):
        raise invalid("arguments", "holds characters that are not valid UTF-8 (lone surrogates)")
    return text, decoded


@functools.lru_cache(maxsize=512)
def _validator(schema_text: str) -> Validator:
    schema = json.loads(schema_text)
    validator: Validator = validators.validator_for(schema)(schema)
    return validator


def check_arguments(schema_text: str | None, arguments: dict[str, Any]) -> None:
    """400 naming the first (most relevant) mismatch when the arguments do not satisfy the program's schema."""
    if not schema_text:
        return
    try:
        error = exceptions.best_match(_validator(schema_text).iter_errors(arguments))
    except Exception as exc:  # a stored schema can still fail when applied (an unresolvable remote $ref, say)
        raise BadRequest(f"the program's arguments schema cannot be applied: {exc}") from None
    if error is None:
        return
    where = error.json_path if error.absolute_path else "arguments"
    message = f"arguments do not match the program's schema: {where}: {error.message}"
    raise ValidationFailed(message, [ErrorDetail(loc=["body", "arguments", *error.absolute_path], msg=error.message)])


def check_run_config(config: dict[str, Any], max_workers: int) -> None:
    """Bounds that depend on the settings and on each other (types were checked by the model)."""
    for field in ("workers", "min_workers", "max_workers"):
        value = config.get(field)
        if value is not None and value > max_workers:
            raise invalid(f"config.{field}", f"at most {max_workers} on this gateway")
    low, high = config.get("min_workers"), config.get("max_workers")
    if low is not None and high is not None and low > high:
        raise invalid("config.min_workers", "must not exceed config.max_workers")
