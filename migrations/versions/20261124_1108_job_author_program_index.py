"""job (author_id, program_id, created_at DESC, id DESC): the per-user list filtered by function, provider or catalog

Without it those filters (and their counts) intersect the author's index with the program's, whose jobs are every
user's: on 100,000 jobs a heavy user's `filter=catalog` count took 6 ms and `provider=` 10 ms; with it, < 0.6 ms.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 11:08:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_job_author_program_created"


def upgrade() -> None:
    # CONCURRENTLY: a big job table stays writable while the index builds.
    with op.get_context().autocommit_block():
        op.create_index(
            INDEX,
            "job",
            ["author_id", "program_id", sa.text("created_at DESC"), sa.text("id DESC")],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="job", postgresql_concurrently=True, if_exists=True)
