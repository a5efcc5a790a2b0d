"""Writing a report file: build the report, render it, write it atomically
through the file primitives; the scheduled reports (``reports/`` in the store)."""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from .. import files as diskio
from ..errors import ValidationError
from .compute import build_report
from .model import Report
from .rendering import check_format, render

if TYPE_CHECKING:
    from ..store import Store


def write_report(store: Store, path: str | os.PathLike[str], fmt: str = "html", **kw: Any) -> str:
    """Build the report (``kw`` as for ``build_report``) and write it to
    ``path`` atomically and durably (mode 0666 less the umask); returns the path."""
    fmt = check_format(fmt)
    target = os.path.abspath(os.fspath(path))
    text = render(build_report(store, **kw), fmt)
    diskio.atomic_write(diskio.DISK, target, text.encode("utf-8"))
    return target


# --- scheduled reports: reports/<period>_report_<day>.<ext> and reports/summary.json ------------

REPORTS_DIR = "reports"
SUFFIXES = {"html": "html", "json": "json", "csv": "csv", "text": "txt"}
PERIOD_DAYS = {"daily": 30, "weekly": 91}
"""Days of throughput history in each scheduled report: a month for the daily one, a quarter for the weekly."""


def period_name(period: str, day: date, fmt: str) -> str:
    """``daily_report_2026-12-06.html``, ``weekly_report_2026-W49.html`` (ISO week)."""
    if period == "daily":
        stamp = day.isoformat()
    elif period == "weekly":
        year, week, _weekday = day.isocalendar()
        stamp = f"{year}-W{week:02d}"
    else:
        raise ValidationError(f"unknown report period {period!r}", hint="choose daily or weekly")
    return f"{period}_report_{stamp}.{SUFFIXES[check_format(fmt)]}"


def summary_of(report: Report, period: str, name: str, fmt: str) -> dict[str, Any]:
    """``reports/summary.json``: the headline numbers of the newest scheduled report
    (the state-management document's ``generate_summary``), for programs."""
    totals = report.totals
    return {
        "format_version": report.format_version,
        "generated_at": report.generated_at.isoformat(),
        "period": period,
        "report": f"{REPORTS_DIR}/{name}",
        "report_format": fmt,
        "total_episodes": totals.episodes,
        "progress": totals.stages,
        "done": totals.done,
        "remaining": totals.remaining,
        "completion_percentage": totals.completion_pct,
        "failure_rate_percentage": totals.failure_rate_pct,
        "cost_total": totals.cost_total,
        "completed_in_window": totals.completed_in_window,
        "window_days": report.scope.days,
        "estimated_completion": totals.estimate.date.isoformat() if totals.estimate.date else None,
        "estimate_status": totals.estimate.status,
        "needs_attention": report.attention_total,
        "shows": {s.show_id: {"episodes": s.episodes, "done": s.done, "completion_percentage": s.completion_pct}
                  for s in report.shows if s.show_id is not None},
    }


def write_scheduled(store: Store, period: str, fmt: str | None = None, *, now: datetime | None = None,
                    progress: Any = None) -> list[str]:
    """Write the ``period`` (daily or weekly) report of ``store`` as
    ``reports/<period>_report_<day>.<ext>`` and ``reports/summary.json`` inside the
    store, each atomically and durably; a second run the same day (week) replaces
    that day's file. ``fmt``: default ``reporting: {report_format}``, else html.
    Returns the two paths."""
    config = store.config.reporting
    fmt = check_format(fmt or (config.report_format if config is not None else "html"))
    if period not in PERIOD_DAYS:
        raise ValidationError(f"unknown report period {period!r}", hint="choose daily or weekly")
    moment = (now or store.clock()).astimezone(timezone.utc)
    report = build_report(store, days=PERIOD_DAYS[period], now=moment, progress=progress)
    name = period_name(period, moment.date(), fmt)
    text = render(report, fmt).encode("utf-8")
    summary = (json.dumps(summary_of(report, period, name, fmt), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    folders = store.writer.folders
    written = []
    with folders.open((REPORTS_DIR,), create=True) as folder:  # never through a symlink
        for filename, data in ((name, text), ("summary.json", summary)):
            path = folders.path((REPORTS_DIR, filename))
            diskio.atomic_write(store.writer.disk, path, data, dir_fd=folder)
            written.append(path)
    return written


def scheduled_path(store: Store, period: str, day: date, fmt: str) -> str:
    """Where the ``period`` report of ``day`` goes (whether or not it was written)."""
    return store.writer.folders.path((REPORTS_DIR, period_name(period, day, fmt)))
