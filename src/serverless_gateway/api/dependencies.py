"""The packages functions may depend on, as the client's `dependencies_versions()` reads them."""

from __future__ import annotations

from ..deps import SettingsDep, UserDep
from ..errors import error_responses
from .routing import SlashRouter

router = SlashRouter(tags=["programs"])


@router.get(
    "/dependencies-versions/",
    response_model=list[str],
    summary="Allowed function dependencies",
    description="The dependency allow-list (`GATEWAY_DEPENDENCY_ALLOWLIST`) as requirement strings; "
    "an empty list means any installable requirement is accepted.",
    responses=error_responses(401, 403),
)
async def dependencies_versions(_: UserDep, settings: SettingsDep) -> list[str]:
    return sorted(settings.dependency_allowlist or [])
