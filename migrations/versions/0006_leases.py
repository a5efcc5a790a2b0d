"""Live leases of stage runs: the table ``leases``.

One row per episode a run holds: the run's id, owner and stage, its lease
length, and when the lease expires by the database's clock. Coordination
state, not derived from the files: it starts empty (a run in progress then
counts from the lease its episode file records), so the rows are not rebuilt.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statekit.index.tables import UTCTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("show_id", sa.String(128), primary_key=True),
        sa.Column("episode_id", sa.String(128), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("lease_seconds", sa.Float, nullable=False),
        sa.Column("expires_at", UTCTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
