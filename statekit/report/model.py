"""What a report holds (the models the JSON format dumps), the constants
both sides share, and how its percentages are rounded. No I/O."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from .. import __version__

FORMAT_VERSION = 1
"""Bumped on any change to the JSON or CSV layout that could break a reader."""
FORMATS = ("text", "json", "csv", "html")
DEFAULT_DAYS = 30
DEFAULT_STUCK_AFTER = timedelta(hours=24)
ATTENTION_LIMIT = 200
"""At most this many episodes are listed as needing attention (all are counted)."""
ESTIMATE_ACTIVE_DAYS = 7
TOP_KINDS = 5
MAX_MESSAGE = 300

Reason = Literal["lease_expired", "held", "failed", "stuck", "gave_up"]
REASONS: tuple[Reason, ...] = ("lease_expired", "held", "failed", "stuck", "gave_up")
"""Why an episode needs attention, most urgent first (an episode gets the first that applies)."""
REASON_TEXT = {
    "lease_expired": "worker stopped",
    "held": "held for a person",
    "failed": "failed, will retry",
    "stuck": "stuck",
    "gave_up": "given up",
}

Progress = Callable[[int, int], None]
Day = date  # for fields named ``date``, which hide the type inside their class


def pct(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, to one decimal (0.0 of nothing)."""
    return round(100.0 * part / whole, 1) if whole else 0.0


class DayCount(BaseModel):
    """Episodes that reached a terminal stage on one UTC day."""

    date: Day
    completed: int
    by_stage: dict[str, int]


class KindCount(BaseModel):
    kind: str
    count: int


class Estimate(BaseModel):
    """When the remaining episodes will be done at the recent rate."""

    status: Literal["estimated", "done", "unknown"]
    date: Day | None = None
    rate_per_day: float | None = None
    basis_from: Day | None = None
    basis_to: Day | None = None
    basis_completed: int = 0
    active_days: int = 0


class Summary(BaseModel):
    """One show (or, with ``show_id`` None, every show in the report)."""

    show_id: str | None
    title: str
    episodes: int
    stages: dict[str, int]
    done: int
    skipped: int
    succeeded: int
    remaining: int
    completion_pct: float
    succeeded_pct: float
    failures: int
    episodes_with_failures: int
    failure_rate_pct: float
    error_kinds: list[KindCount]
    cost_total: float
    cost_by_stage: dict[str, float]
    completed_in_window: int
    throughput: list[DayCount]
    estimate: Estimate


class AttentionItem(BaseModel):
    """An episode a person should look at."""

    show_id: str
    episode_id: str
    title: str
    stage: str
    reason: Reason
    since: datetime
    updated_at: datetime
    error_count: int
    last_error_kind: str | None = None
    message: str | None = None


class PipelineInfo(BaseModel):
    name: str
    initial: str
    stages: list[str]
    terminal: list[str]
    failure_stage: str | None
    give_up_stage: str | None


class Scope(BaseModel):
    show: str | None
    days: int
    start: date
    end: date
    stuck_after_hours: float


def _is_empty(value: list[PausedStage]) -> bool:
    return not value


class PausedStage(BaseModel):
    """A stage paused by an operator (``statekit pause``): claims hand none of it out."""

    stage: str
    show: str | None
    since: str
    by: str | None = None
    note: str | None = None


class Report(BaseModel):
    format_version: int = FORMAT_VERSION
    generated_at: datetime
    statekit_version: str = __version__
    store: str
    pipeline: PipelineInfo
    scope: Scope
    totals: Summary
    shows: list[Summary]
    attention: list[AttentionItem]
    attention_counts: dict[str, int]
    attention_total: int
    attention_truncated: bool
    paused: list[PausedStage] = Field(default_factory=list, exclude_if=_is_empty)
    """Paused stages; in the JSON only when there are some (readers of format 1 see no new key otherwise)."""
