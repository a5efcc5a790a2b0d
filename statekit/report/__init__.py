"""Progress reports: where every episode is, what is done, what failed, what
it cost, how fast work finishes and when it will be finished.

``build_report`` reads the index once (one read snapshot, nothing written)
and returns a ``Report``; ``render`` turns it into text, JSON, CSV or one
self-contained HTML file with inline SVG charts; ``write_report`` does both
and writes the file atomically. The JSON and CSV formats are documented in
``docs/report-format.md`` and versioned by ``FORMAT_VERSION``.

The package keeps computing apart from rendering:

- ``model``: the ``Report`` models (what the JSON format holds) and the constants;
- ``compute``: ``build_report``, reading the index only;
- ``text_format``, ``csv_format``, ``html_format`` (with ``charts`` and
  ``display``): one format each, from a ``Report`` alone;
- ``rendering``: ``render`` (any format); ``writing``: ``write_report``.
"""

# ruff: noqa: F401  (the names beyond __all__ stay importable from here, as before the split)

from __future__ import annotations

from .compute import attention_reason, build_report
from .csv_format import ALL_SHOWS, CSV_COLUMNS, render_csv
from .display import amount
from .html_format import render_html
from .model import (
    ATTENTION_LIMIT,
    DEFAULT_DAYS,
    DEFAULT_STUCK_AFTER,
    ESTIMATE_ACTIVE_DAYS,
    FORMAT_VERSION,
    FORMATS,
    MAX_MESSAGE,
    REASON_TEXT,
    REASONS,
    TOP_KINDS,
    AttentionItem,
    Day,
    DayCount,
    Estimate,
    KindCount,
    PipelineInfo,
    Progress,
    Reason,
    Report,
    Scope,
    Summary,
)
from .rendering import render
from .text_format import render_text
from .writing import write_report

__all__ = ["FORMATS", "FORMAT_VERSION", "Report", "build_report", "render", "write_report"]

