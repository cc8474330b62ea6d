"""The tables of the gateway, as SQLAlchemy 2 typed mappings."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base


class JobStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PENDING, JobStatus.RUNNING})


class ProgramType(enum.StrEnum):
    GENERIC = "GENERIC"
    APPLICATION = "APPLICATION"
    CIRCUIT = "CIRCUIT"


class AccessLevel(enum.StrEnum):
    VIEW = "view"
    RUN = "run"


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class User(Base):
    __tablename__ = "user"

    id: Mapped[uuid.UUID] = _uuid_pk()
    username: Mapped[str] = mapped_column(String(150), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = _created_at()


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _created_at()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Group(Base):
    __tablename__ = "group"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(150), unique=True)
    created_at: Mapped[datetime] = _created_at()


class GroupMembership(Base):
    __tablename__ = "group_membership"

    group_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True, index=True)


class Provider(Base):
    __tablename__ = "provider"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(150), unique=True)
    created_at: Mapped[datetime] = _created_at()


class ProviderAdminGroup(Base):
    __tablename__ = "provider_admin_group"

    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("provider.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("group.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Program(Base):
    __tablename__ = "program"
    __table_args__ = (
        Index(
            "uq_program_author_title",
            "author_id",
            "title",
            unique=True,
            postgresql_where=text("provider_id IS NULL"),
        ),
        Index(
            "uq_program_provider_title",
            "provider_id",
            "title",
            unique=True,
            postgresql_where=text("provider_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    title: Mapped[str] = mapped_column(String(255))
    entrypoint: Mapped[str] = mapped_column(String(255))
    artifact_key: Mapped[str] = mapped_column(String(512))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    dependencies: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    env_vars: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    description: Mapped[str] = mapped_column(Text, server_default="")
    type: Mapped[str] = mapped_column(String(20), server_default=ProgramType.GENERIC.value)
    version: Mapped[str] = mapped_column(String(64), server_default="0.0.0")
    arguments_schema: Mapped[str | None] = mapped_column(Text)
    provider_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("provider.id", ondelete="RESTRICT"))
    author_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    disabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ProgramAccess(Base):
    __tablename__ = "program_access"

    program_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("program.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("group.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    level: Mapped[str] = mapped_column(String(10))


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_author_created", "author_id", text("created_at DESC"), text("id DESC")),
        Index("ix_job_author_status_created", "author_id", "status", text("created_at DESC")),
        Index("ix_job_program_created", "program_id", text("created_at DESC"), text("id DESC")),
        Index("ix_job_author_program_created", "author_id", "program_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_job_active",
            "status",
            "author_id",
            "created_at",
            postgresql_where=text("status IN ('QUEUED', 'PENDING', 'RUNNING')"),
        ),
        Index("ix_job_ray_unconfirmed", "author_id", postgresql_where=text("NOT ray_confirmed")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    program_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("program.id", ondelete="CASCADE"))
    author_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.QUEUED.value)
    sub_status: Mapped[str | None] = mapped_column(String(32))
    arguments: Mapped[str] = mapped_column(Text, server_default="{}")
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[str | None] = mapped_column(Text)
    result_key: Mapped[str | None] = mapped_column(String(512))
    ray_submission_id: Mapped[str | None] = mapped_column(String(128))
    message: Mapped[str | None] = mapped_column(Text)
    logs_key: Mapped[str | None] = mapped_column(String(512))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Why the gateway itself asked for the stop (e.g. the run-time limit); None for a user's stop.
    stop_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # Set once Ray accepted the submission: a PENDING job without it may never have reached Ray.
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Ray cluster the job was handed to (a `ray_cluster` row; None: the shared GATEWAY_RAY_ADDRESS cluster).
    cluster_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # Hash of the one-time code the launcher trades for the job's token, arguments and env vars.
    bootstrap_hash: Mapped[str | None] = mapped_column(String(64))
    # False while a job its launcher reported ended is still on Ray: it keeps its running slot until Ray agrees.
    ray_confirmed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))


class JobEvent(Base):
    __tablename__ = "job_event"
    __table_args__ = (Index("ix_job_event_job_created", "job_id", "created_at"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(32))
    context: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _created_at()


class RuntimeJob(Base):
    __tablename__ = "runtime_job"
    __table_args__ = (Index("ix_runtime_job_job_created", "job_id", "created_at"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    runtime_job: Mapped[str] = mapped_column(String(255))
    runtime_session: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created_at()


class ClusterKind(enum.StrEnum):
    LOCAL = "local"
    STATIC = "static"


class ClusterState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class RayCluster(Base):
    """A Ray cluster the engine submits to: a sandboxed local head of one tenant, or an operator's cluster."""

    __tablename__ = "ray_cluster"

    id: Mapped[uuid.UUID] = _uuid_pk()
    kind: Mapped[str] = mapped_column(String(16))
    # Static clusters are named by the operator; local heads are named after nothing.
    name: Mapped[str | None] = mapped_column(String(150), unique=True)
    # The tenant a local head serves ("user:<id>" or "user:<id>/provider:<id>"); None for static clusters.
    tenant: Mapped[str | None] = mapped_column(String(200), unique=True)
    address: Mapped[str | None] = mapped_column(String(512))
    token: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), server_default=ClusterState.STARTING.value)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    owner: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_at: Mapped[datetime] = _created_at()


class ClusterAssignment(Base):
    """Which tenants run on an operator's cluster: a user's, a group's members' or a provider's jobs."""

    __tablename__ = "cluster_assignment"

    id: Mapped[uuid.UUID] = _uuid_pk()
    cluster_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ray_cluster.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), unique=True)
    group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"), unique=True)
    provider_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("provider.id", ondelete="CASCADE"), unique=True)
class RunIdempotencyKey(Base):
    """The job a user's `Idempotency-Key` created on `programs/run`, with a hash of the body it came with."""

    __tablename__ = "run_idempotency_key"
    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_run_idempotency_key_user_key"),
        Index("ix_run_idempotency_key_created", "created_at"),
        Index("ix_run_idempotency_key_job_id", "job_id"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    body_sha256: Mapped[str] = mapped_column(String(64))
    # Set in the transaction that inserted the key; the key goes when its job does.
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = _created_at()
