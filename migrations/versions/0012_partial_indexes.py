"""Indexes of the episodes that hold a run's lease or wait for a retry's backoff.

``episodes_leased`` (lease_expires_at) and ``episodes_due`` (due_at) are
partial: only the rows where the column is set have an entry. They answer
what read every row before: the ``statekit_leases`` gauge of a metrics
scrape, ``recover``'s expired leases and ``gc``'s live runs read the few
leased rows, and the ``statekit_oldest_waiting_seconds`` gauge the few rows
in backoff (the others from ``episodes_by_ready_for``), not a show of
100,000 episodes. A write outside a run or a backoff leaves them alone (its
row has no entry before or after). The rows are not changed here;
``rows_revision`` stays as it is.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

PARTIAL = {"episodes_leased": "lease_expires_at", "episodes_due": "due_at"}


def upgrade() -> None:
    for name, column in PARTIAL.items():
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "episodes", [column], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name in PARTIAL:
        op.drop_index(name, table_name="episodes")
