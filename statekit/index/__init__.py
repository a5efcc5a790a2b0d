"""The index: a SQL copy of the files, for questions about many episodes.

It is never the truth: every row comes from a file and can be rebuilt from
the files alone (``rebuild``), brought up to date incrementally (``sync``) and
checked against them (``verify``). Writes here happen after the files and
events are durable, in one transaction per store write.

Modules: ``rows`` (rows derived from files; no SQLAlchemy), ``tables`` and
``dialect`` (schema, per-database SQL), ``db`` (the ``Index`` class), and the
maintenance of the index: ``connect`` (open, upgrade), ``rebuild``, ``sync``,
``verify``. The names below load ``db`` (and SQLAlchemy) on first use, so the
write path can import ``rows`` without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .rows import claim_rows, episode_row, event_row, event_rows_of, show_row, totals_delta

if TYPE_CHECKING:
    from .db import SQL_TIMEOUT_S, Index, create_schema, engine_for, revision_of
    from .tables import INDEX_REVISION, metadata

__all__ = ["Index", "INDEX_REVISION", "SQL_TIMEOUT_S", "claim_rows", "create_schema", "engine_for", "episode_row",
           "event_row", "event_rows_of", "metadata", "revision_of", "show_row", "totals_delta"]

_LAZY = {"Index": "db", "SQL_TIMEOUT_S": "db", "create_schema": "db", "engine_for": "db", "revision_of": "db",
         "INDEX_REVISION": "tables", "metadata": "tables"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
