"""Events name the stage their cost was spent in; the index records who derived its rows.

``events.stage``: for an event that carries a cost, the stage the money
was spent in (a worker's costs are on ``checkpoint`` and ``cost`` events,
whose ``from_stage`` is empty). ``index_meta``: statekit's notes about the
index; its ``rows_revision`` says which derivation made the rows.

Neither is filled here: the column comes from the event logs, not from the
rows. This revision leaves ``rows_revision`` unset, so the next
``Store.open`` (or ``statekit db upgrade``) rebuilds the rows from the
files, also after a bare ``alembic upgrade head``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("stage", sa.String(128)))
    op.create_table(
        "index_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("index_meta")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("stage")
