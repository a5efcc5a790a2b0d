"""How the formats for people (text and HTML) write costs, times, ages and
error kinds, and how HTML escapes text. Pure functions of their arguments."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

from .model import TOP_KINDS, KindCount


def amount(value: float) -> str:
    """A cost for people: up to 4 decimals, no trailing zeros."""
    return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"


def when(moment: datetime) -> str:
    """A moment as ``YYYY-MM-DD HH:MM``, in UTC."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def age(now: datetime, then: datetime) -> str:
    """How long ago ``then`` was, in the two largest units (``2d 5h``, ``3h 4m``, ``7m``)."""
    seconds = max(0, int((now - then).total_seconds()))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m"


def kinds_text(kinds: list[KindCount]) -> str:
    """The first ``TOP_KINDS`` error kinds with their counts (``none`` for none)."""
    return ", ".join(f"{k.kind} {k.count}" for k in kinds[:TOP_KINDS]) or "none"


def escape(value: Any) -> str:
    """Escaped for HTML text and attribute values alike."""
    return html.escape(str(value), quote=True)
