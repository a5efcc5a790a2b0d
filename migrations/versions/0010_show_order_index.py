"""An index in show order: ``list()`` a page at a time (``limit``, ``after``).

``episodes_in_order`` (show_id, position, created_at, episode_id) holds the
order ``list()`` returns, so a page of a show of 100,000 episodes is read
from where it starts (a range of the index), not sorted out of every row.
A write leaves its entry alone (none of its columns changes after a
create: the write path checks ``created_at`` rather than setting it). The
rows are not changed here; ``rows_revision`` stays as it is.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("episodes_in_order", "episodes", ["show_id", "position", "created_at", "episode_id"])


def downgrade() -> None:
    op.drop_index("episodes_in_order", table_name="episodes")
