"""job.result_key: a result larger than the inline limit lives in storage under this key

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("result_key", sa.String(512), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "result_key")
