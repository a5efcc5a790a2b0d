"""Operator controls: an episode's ``priority``; ``run_starts`` for rate limits.

``episodes.priority`` (integer, 0 unless the file says otherwise): claims and
``next()`` take higher first, then the longest-waiting; the index
``episodes_by_ready_for`` becomes (ready_for, priority DESC, stage_entered_at)
so that order is read from it. No file could hold a priority before this
revision, so the rows keep ``rows_revision`` (0 is right for all of them).

``run_starts``: when each run of a stage with a ``rate`` limit started, by the
database's clock (coordination state, like ``leases``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statekit.index.tables import UTCTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.drop_index("episodes_by_ready_for", table_name="episodes")
    op.create_index("episodes_by_ready_for", "episodes", ["ready_for", sa.text("priority DESC"), "stage_entered_at"])
    op.create_table(
        "run_starts",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("started_at", UTCTime, nullable=False),
        sa.Column("show_id", sa.String(128), nullable=False),
        sa.Column("episode_id", sa.String(128), nullable=False),
    )
    op.create_index("run_starts_by_stage", "run_starts", ["stage", "started_at"])


def downgrade() -> None:
    op.drop_index("run_starts_by_stage", table_name="run_starts")
    op.drop_table("run_starts")
    op.drop_index("episodes_by_ready_for", table_name="episodes")
    op.create_index("episodes_by_ready_for", "episodes", ["ready_for", "stage_entered_at"])
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("priority")
