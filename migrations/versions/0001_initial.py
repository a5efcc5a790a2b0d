"""The SQL contract: episodes, events, shows, stage_counts (+ stage_totals).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statekit.index.tables import Document, UTCTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "shows",
        sa.Column("show_id", Id, primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("created_at", UTCTime),
        sa.Column("updated_at", UTCTime),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("data", Document, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("file_mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("checked_at_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "episodes",
        sa.Column("show_id", Id, primary_key=True),
        sa.Column("episode_id", Id, primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("stage", Id, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", UTCTime, nullable=False),
        sa.Column("updated_at", UTCTime, nullable=False),
        sa.Column("cost_total", sa.Float, nullable=False),
        sa.Column("attempts_total", sa.Integer, nullable=False),
        sa.Column("error_count", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("stage_entered_at", UTCTime, nullable=False),
        sa.Column("previous_stage", Id),
        sa.Column("ready_for", Id),
        sa.Column("message", sa.Text),
        sa.Column("costs", Document, nullable=False),
        sa.Column("data", Document, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("file_mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("checked_at_ns", sa.BigInteger, nullable=False),
        sa.Column("file_stamp", sa.String(200)),
    )
    op.create_index("episodes_by_ready_for", "episodes", ["ready_for", "stage_entered_at"])
    op.create_index("episodes_files", "episodes", ["show_id", "episode_id", "file_stamp"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("show_id", Id, nullable=False),
        sa.Column("episode_id", Id, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("at", UTCTime, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("from_stage", Id),
        sa.Column("to_stage", Id),
        sa.Column("message", sa.Text),
        sa.Column("cost", sa.Float),
        sa.Column("data", Document, nullable=False),
        sa.UniqueConstraint("show_id", "episode_id", "version", name="events_one_per_version"),
    )
    op.create_table(
        "stage_totals",
        sa.Column("show_id", Id, primary_key=True),
        sa.Column("stage", Id, primary_key=True),
        sa.Column("episodes", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
    )
    op.execute(
        "CREATE VIEW stage_counts AS "
        "SELECT show_id, stage, episodes AS n FROM stage_totals WHERE episodes > 0"
    )


def downgrade() -> None:
    op.execute("DROP VIEW stage_counts")
    for table in ("stage_totals", "events", "episodes", "shows"):
        op.drop_table(table)
