"""The access rules, in one place: which programs (and so jobs and files) a user may see, run and manage."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..models import AccessLevel, GroupMembership, Program, ProgramAccess, ProviderAdminGroup

# `user_id` may be a value or a bind parameter (the run path builds its statements once).
UserId = uuid.UUID | Any


def _member_groups(user_id: UserId) -> Select[uuid.UUID]:
    return select(GroupMembership.group_id).where(GroupMembership.user_id == user_id)


def admin_provider_ids(user_id: UserId) -> Select[uuid.UUID]:
    """The providers whose admin groups hold this user."""
    return select(ProviderAdminGroup.provider_id).where(ProviderAdminGroup.group_id.in_(_member_groups(user_id)))


def program_administered(user_id: UserId, program: Any = Program) -> ColumnElement[bool]:
    """SQL condition: the program is a provider's, and the user is one of that provider's admins."""
    return and_(program.provider_id.is_not(None), program.provider_id.in_(admin_provider_ids(user_id)))


def program_manageable(user_id: UserId) -> ColumnElement[bool]:
    """SQL condition: the user may manage this program (see its env vars, its jobs' provider logs...)."""
    return or_(and_(Program.provider_id.is_(None), Program.author_id == user_id), program_administered(user_id))


def _granted(user_id: UserId, level: AccessLevel | None = None) -> ColumnElement[bool]:
    """SQL condition: a provider's program granted to a group of the user's (at `level`, or any level)."""
    granted = exists().where(
        ProgramAccess.program_id == Program.id, ProgramAccess.group_id.in_(_member_groups(user_id))
    )
    if level is not None:
        granted = granted.where(ProgramAccess.level == level.value)
    return and_(Program.provider_id.is_not(None), granted)


def program_visible(user_id: UserId) -> ColumnElement[bool]:
    """SQL condition: the user may see this program (own, administered provider, or granted to a group of theirs)."""
    return or_(program_manageable(user_id), _granted(user_id))


def program_runnable(user_id: UserId) -> ColumnElement[bool]:
    """SQL condition: the user may run this program (as `program_visible`, but a grant must be `run`)."""
    return or_(program_manageable(user_id), _granted(user_id, AccessLevel.RUN))


async def is_provider_admin(session: AsyncSession, user_id: uuid.UUID, provider_id: uuid.UUID) -> bool:
    """Whether the user is in one of the provider's admin groups."""
    found = await session.scalar(
        select(
            exists()
            .where(ProviderAdminGroup.provider_id == provider_id)
            .where(ProviderAdminGroup.group_id.in_(_member_groups(user_id)))
        )
    )
    return bool(found)
