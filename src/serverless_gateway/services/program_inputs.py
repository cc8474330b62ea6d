"""Parsing and checking what clients send about programs: titles, dependencies, env vars, schemas, arguments."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from ..errors import ErrorDetail, PayloadTooLarge, ValidationFailed
from ..models import ProgramType
from .argument_schemas import MAX_SCHEMA_BYTES, check_schema_document, validation_slots
from .requirements import allowed_names, requirement_refusal

TITLE_PATTERN = r"^(?!\.+$)[A-Za-z0-9_.-]{1,255}$"
_TITLE = re.compile(TITLE_PATTERN)
TITLE_RULE = "1 to 255 letters, digits, '-', '_' or '.' (not only dots); 'provider/title' names a provider's function"
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
        raise invalid("title", f"must be {TITLE_RULE}")
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
    allowed = allowed_names(allowlist)
    for item in items:
        refusal = requirement_refusal(item, allowed)
        if refusal is not None:
            raise invalid("dependencies", refusal)
    return items


RESERVED_ENV_NAMES = frozenset({"DATA_PATH", "ARGUMENTS_PATH", "RESULTS_PATH"})
RESERVED_ENV_PREFIXES = ("ENV_JOB_", "ENV_GATEWAY_", "GATEWAY_")
"""What the gateway and the official client's in-job contract set for every job (COMPAT.md)."""


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
        if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
            raise invalid("env_vars", f"{name!r} is set by the gateway for every job and cannot be overridden")
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
    if len(raw.encode("utf-8", errors="surrogatepass")) > MAX_SCHEMA_BYTES:
        raise invalid("arguments_schema", f"at most {MAX_SCHEMA_BYTES} bytes")
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid("arguments_schema", f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise invalid("arguments_schema", "nested too deeply") from None
    if schema == {}:
        return True, None
    if not isinstance(schema, (dict, bool)):
        raise invalid("arguments_schema", "a JSON Schema is an object or a boolean")
    check_schema_document(schema)
    return True, json.dumps(schema, separators=(",", ":"))


async def check_arguments_schema(raw: str | None) -> tuple[bool, str | None]:
    """`parse_arguments_schema` in a worker thread, a few at a time: never on the event loop."""
    if raw is None:
        return False, None
    async with validation_slots:
        return await asyncio.to_thread(parse_arguments_schema, raw)


def decode_schema(text: str | None) -> dict[str, Any] | bool | None:
    if not text:
        return None
    value = json.loads(text)
    return value if isinstance(value, (dict, bool)) and value != {} else None


def parse_arguments(value: dict[str, Any] | str | None, *, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """Run arguments as (the JSON text stored on the job, the decoded object); 413 when the text passes `max_bytes`."""
    if value is None:
        return "{}", {}
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value.strip() or "{}"
    if len(text) > max_bytes or len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise PayloadTooLarge(f"The arguments are larger than the limit of {max_bytes} bytes.")
    if isinstance(value, dict):
        return text, value
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid("arguments", f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise invalid("arguments", "nested too deeply") from None
    if decoded is None:
        return "{}", {}
    if not isinstance(decoded, dict):
        raise invalid("arguments", "must be a JSON object")
    if not _encodable(text):
        raise invalid("arguments", "holds characters that are not valid UTF-8 (lone surrogates)")
    return text, decoded


def check_run_config(config: dict[str, Any], max_workers: int, max_run_seconds: int | None = None) -> None:
    """Bounds that depend on the settings and on each other (types were checked by the model)."""
    asked = config.get("max_run_seconds")
    if asked is not None and max_run_seconds is not None and asked > max_run_seconds:
        raise invalid("config.max_run_seconds", f"at most {max_run_seconds} on this gateway")
    for field in ("workers", "min_workers", "max_workers"):
        value = config.get(field)
        if value is not None and value > max_workers:
            raise invalid(f"config.{field}", f"at most {max_workers} on this gateway")
    low, high = config.get("min_workers"), config.get("max_workers")
    if low is not None and high is not None and low > high:
        raise invalid("config.min_workers", "must not exceed config.max_workers")
