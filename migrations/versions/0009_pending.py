"""``episodes.pending``: a hand edit of the file that is not committed yet (issue 14).

NULL when the file's bytes are what its log's last event says; otherwise
``{"fields": [...]}`` (the fields the edit changes) or, for a file that cannot
be read, ``{"fields": null, "error": "..."}``. The row itself holds the
committed version. ``episodes_pending`` indexes only the rows that have one,
so ``list``/``status`` find them without a scan and a write pays nothing.

The rows are not filled here: ``ROWS_REVISION`` moves to 0009, so the next
``Store.open`` (or ``statekit db upgrade``) rebuilds them from the files.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statekit.index.tables import Document

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("pending", Document(), nullable=True))
    op.create_index("episodes_pending", "episodes", ["show_id", "episode_id"],
                    sqlite_where=sa.text("pending IS NOT NULL"), postgresql_where=sa.text("pending IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("episodes_pending", table_name="episodes")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("pending")
