"""token lifecycle and limits: api_token.expires_at/revoked_at/last_used_at, user.disabled, job.stop_reason

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_token", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_token", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_token", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("user", sa.Column("disabled", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("job", sa.Column("stop_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "stop_reason")
    op.drop_column("user", "disabled")
    op.drop_column("api_token", "last_used_at")
    op.drop_column("api_token", "revoked_at")
    op.drop_column("api_token", "expires_at")
