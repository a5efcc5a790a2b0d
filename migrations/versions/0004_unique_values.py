"""Unique metadata keys: who holds which value (``unique:`` in statekit.yaml).

``unique_values`` has one row per (key, value hash, episode); ``unique_keys``
the keys those rows were derived for. Both start empty: ``Store.open`` fills
them from the episode rows when the store's ``unique:`` differs from
``unique_keys`` (no file needs reading again).

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "unique_values",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value_sha256", sa.String(64), primary_key=True),
        sa.Column("show_id", Id, primary_key=True),
        sa.Column("episode_id", Id, primary_key=True),
    )
    op.create_index("unique_values_by_episode", "unique_values", ["show_id", "episode_id"])
    op.create_table("unique_keys", sa.Column("key", sa.String(128), primary_key=True))


def downgrade() -> None:
    op.drop_table("unique_keys")
    op.drop_index("unique_values_by_episode", table_name="unique_values")
    op.drop_table("unique_values")
