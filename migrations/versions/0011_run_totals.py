"""Runs that ended, counted as they end: ``run_totals``.

Per show, stage, kind of end (``finish``, ``fail``, ``recovered``) and error
kind, how many runs ended: the events of those kinds, counted by the write
path as it writes them, and taken off by the database's triggers on
``events`` when such a row is updated or deleted, so the metrics' run and
failure counters read a few rows instead of every event. Filled here from
the events already indexed; the rows of the other tables are not changed
(``rows_revision`` stays).

The triggers' statements are the code's (``statekit.index.tables``), so a
store upgraded here and one whose index was rebuilt hold the same ones.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statekit.index.tables import Id, fill_run_totals, run_totals_ddl

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_totals",
        sa.Column("show_id", Id, primary_key=True),
        sa.Column("stage", Id, primary_key=True),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("error_kind", sa.Text, primary_key=True),
        sa.Column("runs", sa.Integer, nullable=False),
    )
    conn = op.get_bind()
    fill_run_totals(conn)
    for statement in run_totals_ddl(conn.dialect.name):
        conn.exec_driver_sql(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER run_totals_follow ON events")
        op.execute("DROP FUNCTION run_totals_follow()")
    else:
        for name in ("run_totals_update", "run_totals_delete"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("run_totals")
