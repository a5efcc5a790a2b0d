"""The show-order index holds the title: the dashboard's search reads it, not every row.

``episodes_in_order`` (show_id, position, created_at, episode_id) gains
``title``: a search for text in an episode's id, title or show (the live
dashboard's box, and its count of what matched) is answered from the index's
entries, a few dozen bytes each, instead of every row of the table (a kilobyte
or more each, with its data). A write leaves the entry alone unless it changes
the title (the write path checks ``title`` rather than setting it,
``index/db:KEPT_INDEXED``). The rows are not changed here; ``rows_revision``
stays as it is.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ORDER = ["show_id", "position", "created_at", "episode_id"]


def upgrade() -> None:
    op.drop_index("episodes_in_order", table_name="episodes")
    op.create_index("episodes_in_order", "episodes", [*ORDER, "title"])


def downgrade() -> None:
    op.drop_index("episodes_in_order", table_name="episodes")
    op.create_index("episodes_in_order", "episodes", ORDER)
