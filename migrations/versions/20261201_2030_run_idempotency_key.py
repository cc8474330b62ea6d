"""run_idempotency_key: the job each (user, Idempotency-Key) of programs/run created, kept 24 h

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_idempotency_key",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name="fk_run_idempotency_key_user_id_user", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name="fk_run_idempotency_key_job_id_job", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_run_idempotency_key"),
        sa.UniqueConstraint("user_id", "key", name="uq_run_idempotency_key_user_key"),
    )
    op.create_index("ix_run_idempotency_key_created", "run_idempotency_key", ["created_at"])
    op.create_index("ix_run_idempotency_key_job_id", "run_idempotency_key", ["job_id"])


def downgrade() -> None:
    op.drop_table("run_idempotency_key")
