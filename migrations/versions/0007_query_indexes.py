"""Indexes for the questions about many episodes; positions hold only the hand-set order.

``episodes_by_stage`` (stage, stage_entered_at): ``list(stage=)`` and
``stuck()`` read the rows of the stages they ask about, not every row.
``episodes_with_errors`` (updated_at, only rows with ``error_count > 0``):
``with_errors()`` reads only those rows; the others have no entry, so a
write without errors pays nothing for it.

``position`` now holds only show.yaml's hand-set order (show schema 2); the
other episodes follow by ``created_at``. The rows are not changed here: this
revision leaves ``rows_revision`` as it was, so the next ``Store.open`` (or
``statekit db upgrade``) rebuilds them from the files.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("episodes_by_stage", "episodes", ["stage", "stage_entered_at"])
    op.create_index("episodes_with_errors", "episodes", ["updated_at"], sqlite_where=sa.text("error_count > 0"),
                    postgresql_where=sa.text("error_count > 0"))


def downgrade() -> None:
    op.drop_index("episodes_with_errors", table_name="episodes")
    op.drop_index("episodes_by_stage", table_name="episodes")
