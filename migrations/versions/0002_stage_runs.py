"""Stage runs: lease owner and expiry, and when a retry is due.

``next()`` leaves out episodes a live worker holds and retries still in
their backoff. ``ready_for`` is also computed differently from 0002 on (a
run stage not yet done waits to be run where it is), so every episode row
is marked for re-reading: the next ``statekit sync`` (which ``Store.open``
runs after an upgrade) derives the rows again from the files.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statekit.index.tables import UTCTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text))
        batch.add_column(sa.Column("lease_expires_at", UTCTime))
        batch.add_column(sa.Column("due_at", UTCTime))
    # the rows' derived columns are out of date: make sync read every file again
    op.execute("UPDATE episodes SET file_sha256 = '', file_stamp = NULL")


def downgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("due_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
