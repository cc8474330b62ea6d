"""ray_cluster registry, cluster_assignment; job.cluster_id, bootstrap_hash, ray_confirmed (one cluster per tenant)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ray_cluster",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(150), nullable=True),
        sa.Column("tenant", sa.String(200), nullable=True),
        sa.Column("address", sa.String(512), nullable=True),
        sa.Column("token", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), server_default="starting", nullable=False),
        sa.Column("details", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ray_cluster")),
        sa.UniqueConstraint("name", name=op.f("uq_ray_cluster_name")),
        sa.UniqueConstraint("tenant", name=op.f("uq_ray_cluster_tenant")),
    )
    op.create_table(
        "cluster_assignment",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("cluster_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("group_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("provider_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["ray_cluster.id"], name=op.f("fk_cluster_assignment_cluster_id_ray_cluster"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_cluster_assignment_user_id_user"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["group.id"], name=op.f("fk_cluster_assignment_group_id_group"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"], ["provider.id"], name=op.f("fk_cluster_assignment_provider_id_provider"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_assignment")),
        sa.UniqueConstraint("user_id", name=op.f("uq_cluster_assignment_user_id")),
        sa.UniqueConstraint("group_id", name=op.f("uq_cluster_assignment_group_id")),
        sa.UniqueConstraint("provider_id", name=op.f("uq_cluster_assignment_provider_id")),
    )
    op.create_index(op.f("ix_cluster_assignment_cluster_id"), "cluster_assignment", ["cluster_id"])
    op.add_column("job", sa.Column("cluster_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("job", sa.Column("bootstrap_hash", sa.String(64), nullable=True))
    op.add_column("job", sa.Column("ray_confirmed", sa.Boolean(), server_default=sa.text("true"), nullable=False))
    op.create_index(
        "ix_job_ray_unconfirmed", "job", ["author_id"], postgresql_where=sa.text("NOT ray_confirmed")
    )


def downgrade() -> None:
    op.drop_index("ix_job_ray_unconfirmed", table_name="job")
    op.drop_column("job", "ray_confirmed")
    op.drop_column("job", "bootstrap_hash")
    op.drop_column("job", "cluster_id")
    op.drop_index(op.f("ix_cluster_assignment_cluster_id"), table_name="cluster_assignment")
    op.drop_table("cluster_assignment")
    op.drop_table("ray_cluster")
