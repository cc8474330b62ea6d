"""The pip requirements a program may declare: PEP 508, and with an allow-list only named packages from the index."""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def allowed_names(allowlist: list[str] | None) -> frozenset[str] | None:
    """The allow-list's package names, canonical (`Foo_Bar` and `foo-bar` are one package); None: no allow-list."""
    return None if allowlist is None else frozenset(canonicalize_name(name) for name in allowlist)


def requirement_refusal(text: str, allowed: frozenset[str] | None) -> str | None:
    """Why `text` may not be installed (None: it may).

    Only `name[extras] specifiers ; markers` is a requirement; with an allow-list its name must be listed and it
    may not point anywhere (`name @ URL`: a wheel, a VCS checkout or a local path), since that bypasses the index.
    """
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        return f"{text!r} is not a valid requirement (only 'name[extras] specifiers ; markers'): {exc}"
    if allowed is None:
        return None
    if requirement.url is not None:
        return f"{text!r} names a URL or path; only packages by name are allowed on this gateway"
    if canonicalize_name(requirement.name) not in allowed:
        return f"{requirement.name!r} is not an allowed dependency on this gateway"
    return None
