"""Rendering a report in one of ``FORMATS``: from a ``Report`` alone (no
index, no store, no file)."""

from __future__ import annotations

import json

from ..errors import ValidationError
from .csv_format import render_csv
from .html_format import render_html
from .model import FORMATS, Report
from .text_format import render_text


def check_format(fmt: object) -> str:
    """``fmt`` if it is one of ``FORMATS``; else ``ValidationError``."""
    if fmt not in FORMATS:
        raise ValidationError(f"unknown report format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    return str(fmt)


def render(report: Report, fmt: str) -> str:
    """The report as ``text``, ``json``, ``csv`` or ``html`` (one self-contained page)."""
    fmt = check_format(fmt)
    if fmt == "json":
        return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return render_csv(report)
    if fmt == "html":
        return render_html(report)
    return render_text(report)

