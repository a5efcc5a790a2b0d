"""The CSV format: one tidy table, documented in docs/report-format.md."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from .model import Report

CSV_COLUMNS = ("section", "show_id", "episode_id", "stage", "date", "key", "value")
ALL_SHOWS = "*"
"""``show_id`` of the rows about every show in the report (never a valid show id)."""


def _csv_rows(report: Report) -> Iterable[tuple[Any, ...]]:
    summaries = [report.totals, *report.shows]
    for s in summaries:
        sid = ALL_SHOWS if s.show_id is None else s.show_id
        for key in ("episodes", "done", "skipped", "succeeded", "remaining", "completion_pct", "succeeded_pct",
                    "failures", "episodes_with_failures", "failure_rate_pct", "cost_total", "completed_in_window"):
            yield "summary", sid, "", "", "", key, getattr(s, key)
        e = s.estimate
        yield "estimate", sid, "", "", e.date.isoformat() if e.date else "", e.status, e.rate_per_day
        for stage, n in s.stages.items():
            yield "stage", sid, "", stage, "", "episodes", n
        for stage, c in s.cost_by_stage.items():
            yield "stage", sid, "", stage, "", "cost", c
        for k in s.error_kinds:
            yield "error_kind", sid, "", "", "", k.kind, k.count
        for d in s.throughput:
            for stage, n in d.by_stage.items():
                yield "throughput", sid, "", stage, d.date.isoformat(), "completed", n
    for a in report.attention:
        hours = round((report.generated_at - a.since).total_seconds() / 3600, 2)
        yield "attention", a.show_id, a.episode_id, a.stage, a.since.date().isoformat(), a.reason, hours


def render_csv(report: Report) -> str:
    """One tidy table (``CSV_COLUMNS``; see docs/report-format.md): ``value``
    is always a number or empty, ``date`` always ``YYYY-MM-DD`` or empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in _csv_rows(report):
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()
