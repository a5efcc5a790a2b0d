"""Progress reports: where every episode is, what is done, what failed, what
it cost, how fast work finishes and when it will be finished.

``build_report`` reads the index once (one read snapshot, nothing written)
and returns a ``Report``; ``render`` turns it into text, JSON, CSV or one
self-contained HTML file with inline SVG charts; ``write_report`` does both
and writes the file atomically. The JSON and CSV formats are documented in
``docs/report-format.md`` and versioned by ``FORMAT_VERSION``.

Sources: counts and costs come from the index's per-stage totals; failures
and error kinds from each episode's ``error_history`` (the copy of the file
the index keeps in ``episodes.data``: the truth, including errors recorded
before statekit or by hand, which have no ``fail`` event); throughput from
the ``events`` table (moves into a terminal stage).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from . import __version__
from . import files as diskio
from .errors import ValidationError

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .store import Store

__all__ = ["FORMATS", "FORMAT_VERSION", "Report", "build_report", "render", "write_report"]

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


# --- the report (what the JSON format holds) ---------------------------------------------


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


# --- building ----------------------------------------------------------------------------


class _Tally:
    """What the scans add up for one show."""

    def __init__(self) -> None:
        self.stages: Counter[str] = Counter()
        self.costs: defaultdict[str, float] = defaultdict(float)
        self.failures = 0
        self.with_failures = 0
        self.kinds: Counter[str] = Counter()
        self.daily: defaultdict[date, Counter[str]] = defaultdict(Counter)

    def add(self, other: _Tally) -> None:
        self.stages.update(other.stages)
        for stage, cost in other.costs.items():
            self.costs[stage] += cost
        self.failures += other.failures
        self.with_failures += other.with_failures
        self.kinds.update(other.kinds)
        for day, counts in other.daily.items():
            self.daily[day].update(counts)


def _check_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
        raise ValidationError(f"days must be a whole number of days from 1 to 3660, got {days!r}")
    return days


def _check_format(fmt: object) -> str:
    if fmt not in FORMATS:
        raise ValidationError(f"unknown report format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    return str(fmt)


def build_report(store: Store, *, show: str | None = None, days: int = DEFAULT_DAYS, now: datetime | None = None,
                 stuck_after: timedelta = DEFAULT_STUCK_AFTER, progress: Progress | None = None) -> Report:
    """The report of ``store`` (or of one ``show``) at ``now`` (default: the
    store's clock), with ``days`` days of throughput history. Reads the index
    only, in one read snapshot. ``progress(done, total)`` is called while the
    episodes that need a closer look and the window's events are read."""
    days = _check_days(days)
    if not isinstance(stuck_after, timedelta) or stuck_after.total_seconds() < 0:
        raise ValidationError(f"stuck_after must be a non-negative timedelta, got {stuck_after!r}")
    if show is not None:
        store.counts(show)  # checks the id and that the show exists
    moment = (now or store.clock()).astimezone(timezone.utc)
    today = moment.date()
    start = today - timedelta(days=days - 1)
    p = store.pipeline
    with store.index.reading() as conn:
        reading = _Reading(conn, p, show, moment, moment - stuck_after, start, today)
        titles = reading.totals()
        reading.look(progress)
    tallies = reading.tallies
    show_ids = [show] if show is not None else sorted(
        set(titles) | {s for s, t in tallies.items() if t.stages or t.costs})
    everything = _Tally()
    summaries = []
    for show_id in show_ids:
        everything.add(tallies[show_id])
        summaries.append(_summary(p, tallies[show_id], show_id, titles.get(show_id) or show_id, start, today))
    totals = _summary(p, everything, None, "all shows" if show is None else titles.get(show) or show, start, today)
    found = sorted(reading.attention, key=lambda a: a[:4])
    counts = Counter(REASONS[a[0]] for a in found)
    return Report(
        generated_at=moment, store=store.root,
        pipeline=PipelineInfo(name=p.name, initial=p.initial, stages=list(p.stages), terminal=list(p.terminal),
                              failure_stage=p.failure_stage, give_up_stage=p.give_up_stage),
        scope=Scope(show=show, days=days, start=start, end=today,
                    stuck_after_hours=round(stuck_after.total_seconds() / 3600, 3)),
        totals=totals, shows=summaries, attention=[a[4] for a in found[:ATTENTION_LIMIT]],
        attention_counts={r: counts[r] for r in REASONS if counts[r]}, attention_total=len(found),
        attention_truncated=len(found) > ATTENTION_LIMIT,
    )


class _Reading:
    """The queries of one report, on one connection (one read snapshot)."""

    def __init__(self, conn: Any, p: Pipeline, show: str | None, now: datetime, cutoff: datetime, start: date,
                 today: date) -> None:
        self.conn, self.p, self.show, self.now, self.cutoff = conn, p, show, now, cutoff
        self.start, self.today = start, today
        self.tallies: defaultdict[str, _Tally] = defaultdict(_Tally)
        self.attention: list[tuple[int, datetime, str, str, AttentionItem]] = []
        """(rank of the reason, since, show, episode, item): sorted, the most urgent first."""

    def _rows(self, stmt: Any, table: Any) -> Any:
        return self.conn.execute(stmt if self.show is None else stmt.where(table.c.show_id == self.show))

    def totals(self) -> dict[str, str]:
        """Episodes and cost per show and stage (the index keeps them summed); returns the show titles."""
        from sqlalchemy import select

        from .index.tables import shows, stage_totals

        t = stage_totals.c
        for show_id, stage, n, cost in self._rows(select(t.show_id, t.stage, t.episodes, t.cost), stage_totals):
            tally = self.tallies[show_id]
            if n:
                tally.stages[stage] += int(n)
            if cost:
                tally.costs[stage] += float(cost)
        return dict(self._rows(select(shows.c.show_id, shows.c.title), shows).all())

    def look(self, progress: Progress | None) -> None:
        """Read the file data of the episodes that failed or may need attention
        (no others), then the window's moves into a terminal stage."""
        from sqlalchemy import and_, func, or_, select

        from .index.tables import episodes, events

        p, e, v = self.p, episodes.c, events.c
        closer = [e.error_count > 0, e.lease_expires_at <= self.now,
                  and_(e.stage.not_in((*p.terminal, p.initial)), e.updated_at < self.cutoff)]
        if p.failure_stage is not None:
            closer.append(e.stage == p.failure_stage)
        moved = and_(v.to_stage.in_(p.terminal), v.from_stage.is_not(None), v.from_stage != v.to_stage,
                     v.at >= datetime.combine(self.start, time(), timezone.utc),
                     v.at < datetime.combine(self.today + timedelta(days=1), time(), timezone.utc))
        total = done = 0
        if progress is not None:
            total = sum(self._rows(select(func.count()).select_from(table).where(where), table).scalar_one()
                        for table, where in ((episodes, or_(*closer)), (events, moved)))
            progress(0, total)
        rows = self._rows(select(e.show_id, e.episode_id, e.title, e.stage, e.updated_at, e.stage_entered_at,
                                 e.lease_expires_at, e.data).where(or_(*closer)), episodes)
        for row in rows:
            self._look_closer(*row)
            done += 1
            if progress is not None and done % 500 == 0:
                progress(done, total)
        seen: set[tuple[str, str, date, str]] = set()
        for show_id, ep_id, at, to_stage in self._rows(select(v.show_id, v.episode_id, v.at, v.to_stage)
                                                       .where(moved), events):
            day = at.astimezone(timezone.utc).date()
            if (show_id, ep_id, day, to_stage) not in seen:  # an episode counts once a day
                seen.add((show_id, ep_id, day, to_stage))
                self.tallies[show_id].daily[day][to_stage] += 1
            done += 1
            if progress is not None and done % 500 == 0:
                progress(done, total)
        if progress is not None:
            progress(total, total)

    def _look_closer(self, show_id: str, ep_id: str, title: str, stage: str, updated_at: datetime,
                     entered_at: datetime, lease_expires: datetime | None, data: dict[str, Any]) -> None:
        errors = [x for x in (data.get("error_history") or []) if isinstance(x, dict)]
        tally = self.tallies[show_id]
        if errors:
            tally.failures += len(errors)
            tally.with_failures += 1
            tally.kinds.update(str(x.get("kind") or "unknown") for x in errors)
        last = errors[-1] if errors else {}
        found = attention_reason(self.p, self.now, self.cutoff, stage, updated_at, entered_at, lease_expires,
                                 held=bool(data.get("hold")), gave_up=last.get("action") == "give_up")
        if found is None:
            return
        reason, since = found
        item = AttentionItem(
            show_id=show_id, episode_id=ep_id, title=title or "", stage=stage, reason=reason, since=since,
            updated_at=updated_at, error_count=len(errors),
            last_error_kind=str(last["kind"]) if last.get("kind") else None,
            message=_short(data.get("hold")) or _short(last.get("message")) or _short(data.get("message")))
        self.attention.append((REASONS.index(reason), since, show_id, ep_id, item))


def attention_reason(p: Pipeline, now: datetime, cutoff: datetime, stage: str, updated_at: datetime,
                     entered_at: datetime, lease_expires: datetime | None, *, held: bool,
                     gave_up: bool) -> tuple[Reason, datetime] | None:
    """Why an episode needs a person's look, and since when (None: it does not).
    The first reason that applies wins, in the order of ``REASONS``."""
    if lease_expires is not None and lease_expires <= now:
        return "lease_expired", lease_expires
    if held:
        return "held", entered_at
    if stage == p.failure_stage:
        return "failed", entered_at
    if stage not in p.terminal and stage != p.initial and updated_at < cutoff:
        return "stuck", updated_at
    if stage == p.give_up_stage and gave_up:
        return "gave_up", entered_at
    return None


def _short(text: Any) -> str | None:
    """One line of at most ``MAX_MESSAGE`` characters (None for no text)."""
    if not isinstance(text, str) or not text.strip():
        return None
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def _summary(p: Pipeline, tally: _Tally, show_id: str | None, title: str, start: date, today: date) -> Summary:
    stages = {s: tally.stages.get(s, 0) for s in p.stages}
    stages.update({s: n for s, n in sorted(tally.stages.items()) if s not in stages and n})  # off the graph
    episodes = sum(stages.values())
    done = sum(n for s, n in stages.items() if s in p.terminal)
    skipped = stages.get(p.give_up_stage, 0) if p.give_up_stage in p.terminal else 0
    order = {s: i for i, s in enumerate(stages)}
    costs = {s: round(c, 6) for s, c in sorted(tally.costs.items(), key=lambda kv: (order.get(kv[0], 1 << 30), kv[0]))
             if round(c, 6)}
    throughput = []
    day = start
    while day <= today:
        counts = tally.daily.get(day, Counter())
        throughput.append(DayCount(date=day, completed=sum(counts.values()),
                                   by_stage={s: counts.get(s, 0) for s in p.terminal}))
        day += timedelta(days=1)
    kinds = sorted(tally.kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    return Summary(
        show_id=show_id, title=title, episodes=episodes, stages=stages, done=done, skipped=skipped,
        succeeded=done - skipped, remaining=episodes - done, completion_pct=_pct(done, episodes),
        succeeded_pct=_pct(done - skipped, episodes), failures=tally.failures,
        episodes_with_failures=tally.with_failures, failure_rate_pct=_pct(tally.with_failures, episodes),
        error_kinds=[KindCount(kind=k, count=n) for k, n in kinds], cost_total=round(math.fsum(costs.values()), 6),
        cost_by_stage=costs, completed_in_window=sum(d.completed for d in throughput), throughput=throughput,
        estimate=_estimate(throughput, episodes - done, today),
    )


def _estimate(throughput: list[DayCount], remaining: int, today: date) -> Estimate:
    """The day the remaining episodes are done at the recent rate.

    The rate is taken over the calendar days from the earliest of the last
    ``ESTIMATE_ACTIVE_DAYS`` days (in the window) on which anything finished,
    through today: a pipeline that runs in weekly batches gets its weekly
    rate, and one that stopped slows down day by day instead of looking busy.
    """
    if remaining == 0:
        return Estimate(status="done")
    active = [d for d in throughput if d.completed][-ESTIMATE_ACTIVE_DAYS:]
    if not active:
        return Estimate(status="unknown")
    first = active[0].date
    completed = sum(d.completed for d in throughput if d.date >= first)
    rate = completed / ((today - first).days + 1)
    return Estimate(status="estimated", date=today + timedelta(days=math.ceil(remaining / rate)),
                    rate_per_day=round(rate, 3), basis_from=first, basis_to=today, basis_completed=completed,
                    active_days=len(active))


# --- rendering -------------------------------------------------------------------------


def render(report: Report, fmt: str) -> str:
    """The report as ``text``, ``json``, ``csv`` or ``html`` (one self-contained page)."""
    fmt = _check_format(fmt)
    if fmt == "json":
        return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return render_csv(report)
    if fmt == "html":
        return render_html(report)
    return render_text(report)


def write_report(store: Store, path: str | os.PathLike[str], fmt: str = "html", **kw: Any) -> str:
    """Build the report (``kw`` as for ``build_report``) and write it to
    ``path`` atomically and durably (mode 0666 less the umask); returns the path."""
    fmt = _check_format(fmt)
    target = os.path.abspath(os.fspath(path))
    text = render(build_report(store, **kw), fmt)
    diskio.atomic_write(diskio.DISK, target, text.encode("utf-8"))
    return target


def amount(value: float) -> str:
    """A cost for people: up to 4 decimals, no trailing zeros."""
    return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _age(now: datetime, then: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m"


def _estimate_text(e: Estimate) -> str:
    if e.status == "done":
        return "done"
    if e.status == "unknown" or e.date is None:
        return "unknown (nothing finished in the window)"
    return (f"{e.date.isoformat()} (at {e.rate_per_day:g}/day since {e.basis_from}, "
            f"{e.basis_completed} finished on {e.active_days} active day(s))")


def _kinds_text(kinds: list[KindCount]) -> str:
    return ", ".join(f"{k.kind} {k.count}" for k in kinds[:TOP_KINDS]) or "none"


def render_text(report: Report) -> str:
    """Plain text for a terminal or an email."""
    lines: list[str] = []
    scope = report.scope
    title = f"statekit report: {report.store}"
    lines += [title, "=" * len(title),
              f"generated {_when(report.generated_at)} UTC; pipeline {report.pipeline.name}; "
              f"throughput window {scope.start} .. {scope.end} ({scope.days} days)"
              + (f"; show {scope.show}" if scope.show else ""), ""]
    for s in ([report.totals] if scope.show is None and len(report.shows) != 1 else []) + report.shows:
        head = "ALL SHOWS" if s.show_id is None else f"show {s.show_id}" + (f": {s.title}" if s.title != s.show_id
                                                                            else "")
        lines.append(head)
        lines.append(f"  episodes       {s.episodes}: {s.done} done ({s.completion_pct}%), of which "
                     f"{s.skipped} skipped; {s.succeeded} succeeded ({s.succeeded_pct}%); {s.remaining} remaining")
        width = max((len(k) for k in s.stages), default=5)
        for stage, n in s.stages.items():
            if n:
                lines.append(f"    {stage:<{width}}  {n:>7}")
        lines.append(f"  failures       {s.failures} in {s.episodes_with_failures} episode(s) "
                     f"({s.failure_rate_pct}% of episodes); top kinds: {_kinds_text(s.error_kinds)}")
        lines.append(f"  cost           {amount(s.cost_total)}"
                     + (" (" + ", ".join(f"{k} {amount(v)}" for k, v in s.cost_by_stage.items()) + ")"
                        if s.cost_by_stage else ""))
        recent = [f"{d.date.strftime('%m-%d')} {d.completed}" for d in s.throughput[-7:]]
        lines.append(f"  throughput     {s.completed_in_window} finished in the window; last days: "
                     + ", ".join(recent))
        lines.append(f"  estimated      {_estimate_text(s.estimate)}")
        lines.append("")
    lines.append(f"needs attention: {report.attention_total} episode(s)"
                 + (" (" + ", ".join(f"{n} {r}" for r, n in report.attention_counts.items()) + ")"
                    if report.attention_counts else ""))
    now = report.generated_at
    for a in report.attention:
        lines.append(f"  {a.show_id}/{a.episode_id}  {a.stage}  {a.reason} for {_age(now, a.since)}"
                     + (f"  [{a.last_error_kind}]" if a.last_error_kind else "")
                     + (f"  {a.message}" if a.message else ""))
    if report.attention_truncated:
        lines.append(f"  ... and {report.attention_total - len(report.attention)} more")
    return "\n".join(lines) + "\n"


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


# --- HTML ----------------------------------------------------------------------------------

# One file, nothing fetched: the policy makes the browser refuse any network or script load.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #fff;
  --blue: #0969da; --green: #1a7f37; --red: #cf222e; --grey: #8c959f; --amber: #bf8700; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 18px; margin: 32px 0 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 12px; margin-top: 20px; }
.card, figure, .panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.card { padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.note { color: var(--muted); font-size: 13px; font-weight: 400; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; }
.charts .wide { grid-column: 1 / -1; }
figure { margin: 0; padding: 16px 18px 12px; }
figcaption { font-weight: 600; margin-bottom: 8px; }
figcaption span { font-weight: 400; color: var(--muted); font-size: 13px; }
svg { display: block; width: 100%; height: auto; font-family: inherit; }
svg text { fill: var(--ink); font-size: 12px; }
svg .axis line, svg .axis path { stroke: var(--muted); }
svg .grid line { stroke: #eaeef2; }
svg .tick text, svg .axis-title { fill: var(--muted); }
svg .axis-title { font-size: 12px; }
svg rect.bar:hover { opacity: .8; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; color: var(--muted); font-size: 13px; margin-top: 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
details { margin-top: 8px; font-size: 13px; }
summary { cursor: pointer; color: var(--blue); }
.panel { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.msg { display: block; color: var(--muted); min-width: 200px; max-width: 420px; overflow-wrap: anywhere; }
.nowrap { white-space: nowrap; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.bar-cell { min-width: 140px; }
.meter { height: 8px; background: #eaeef2; border-radius: 4px; overflow: hidden; display: flex; margin-top: 6px; }
.meter span { display: block; height: 100%; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; white-space: nowrap;
  border: 1px solid currentColor; }
.tag.lease_expired, .tag.failed { color: var(--red); }
.tag.held { color: var(--amber); }
.tag.stuck { color: var(--blue); }
.tag.gave_up { color: var(--grey); }
.empty { color: var(--muted); padding: 14px 16px; margin: 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; }
"""

_PALETTE = ("#1a7f37", "#8c959f", "#8250df", "#bf3989", "#0550ae", "#953800")


def _e(value: Any) -> str:
    """Escaped for HTML text and attribute values alike."""
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    """Coordinates: short, and never in exponent form."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _ticks(top: float, count: int = 5, whole: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if whole:
        step = max(1, math.ceil(step))
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.10f}".rstrip("0").rstrip(".")


def _stage_colour(p: PipelineInfo, stage: str) -> str:
    if stage == p.failure_stage:
        return "#cf222e"
    if stage == p.give_up_stage:
        return "#8c959f"
    if stage in p.terminal:
        return "#1a7f37"
    return "#0969da"


def _terminal_colours(p: PipelineInfo) -> dict[str, str]:
    """Throughput bars: the first success stage green, the give-up stage grey, others from a palette."""
    colours: dict[str, str] = {}
    others = iter(_PALETTE[2:])
    for stage in p.terminal:
        if stage == p.give_up_stage:
            colours[stage] = "#8c959f"
        elif "#1a7f37" not in colours.values():
            colours[stage] = "#1a7f37"
        else:
            colours[stage] = next(others, "#57606a")
    return colours


def _svg_open(chart_id: str, width: int, height: int, title: str, desc: str) -> str:
    return (f'<svg id="{chart_id}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{chart_id}-title">{_e(title)}</title><desc id="{chart_id}-desc">{_e(desc)}</desc>')


def _hbar_chart(chart_id: str, title: str, desc: str, rows: list[tuple[str, float, str, str]], axis_title: str,
                whole: bool) -> str:
    """Horizontal bars: (label, value, colour, tooltip) per row, an x axis with ticks."""
    width, left, right, top, row_h = 560, 120, 56, 10, 30
    plot_w = width - left - right
    height = top + row_h * max(len(rows), 1) + 48
    ticks = _ticks(max((v for _, v, _, _ in rows), default=0), 5, whole)
    scale = plot_w / ticks[-1]
    axis_y = top + row_h * max(len(rows), 1)
    parts = [_svg_open(chart_id, width, height, title, desc), '<g class="grid">']
    parts += [f'<line x1="{_num(left + t * scale)}" y1="{top}" x2="{_num(left + t * scale)}" y2="{axis_y}"/>'
              for t in ticks[1:]]
    parts.append("</g><g>")
    for i, (label, value, colour, tip) in enumerate(rows):
        y = top + i * row_h
        w = value * scale
        parts.append(f'<text x="{left - 8}" y="{_num(y + row_h / 2 + 4)}" text-anchor="end">{_e(label)}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y + 5}" width="{_num(max(w, 0.0))}" height="{row_h - 10}" '
                     f'rx="3" fill="{colour}"><title>{_e(tip)}</title></rect>')
        parts.append(f'<text x="{_num(left + w + 6)}" y="{_num(y + row_h / 2 + 4)}">'
                     f'{_e(_tick_label(value) if whole else amount(value))}</text>')
    parts.append(f'</g><g class="axis"><line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/></g><g class="tick">')
    for t in ticks:
        x = _num(left + t * scale)
        parts.append(f'<line x1="{x}" y1="{axis_y}" x2="{x}" y2="{axis_y + 5}" stroke="#59636e"/>'
                     f'<text x="{x}" y="{axis_y + 18}" text-anchor="middle">{_e(_tick_label(t))}</text>')
    parts.append(f'</g><text class="axis-title" x="{left + plot_w / 2:.0f}" y="{height - 6}" '
                 f'text-anchor="middle">{_e(axis_title)}</text></svg>')
    return "".join(parts)


def _funnel_svg(report: Report) -> str:
    s, p = report.totals, report.pipeline
    rows = [(stage, float(n), _stage_colour(p, stage),
             f"{stage}: {n} episode(s), {_pct(n, s.episodes)}% of {s.episodes}") for stage, n in s.stages.items()]
    desc = "Episodes per stage now, in pipeline order: " + "; ".join(f"{st} {n}" for st, n in s.stages.items())
    return _hbar_chart("funnel", "Episodes per stage", desc, rows, "episodes", whole=True)


def _cost_svg(report: Report) -> str:
    s = report.totals
    rows = [(stage, c, "#8250df", f"{stage}: cost {amount(c)} ({_pct_f(c, s.cost_total)}% of {amount(s.cost_total)})")
            for stage, c in s.cost_by_stage.items()]
    desc = "Cost per stage so far: " + ("; ".join(f"{st} {amount(c)}" for st, c in s.cost_by_stage.items())
                                         or "nothing spent yet")
    return _hbar_chart("costs", "Cost by stage", desc, rows, "cost", whole=False)


def _pct_f(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def _throughput_svg(report: Report) -> str:
    s, p = report.totals, report.pipeline
    colours = _terminal_colours(p)
    days = s.throughput
    width, left, right, top, bottom = 1080, 52, 16, 14, 58
    plot_w, plot_h = width - left - right, 220
    height = top + plot_h + bottom
    ticks = _ticks(max((d.completed for d in days), default=0), 4, whole=True)
    y_scale = plot_h / ticks[-1]
    slot = plot_w / max(len(days), 1)
    bar_w = max(min(slot * 0.7, 36.0), 1.0)
    base = top + plot_h
    total = sum(d.completed for d in days)
    desc = (f"Episodes that reached a terminal stage per day, {report.scope.start} to {report.scope.end}: "
            f"{total} in all. " + "; ".join(f"{d.date} {d.completed}" for d in days if d.completed))
    parts = [_svg_open("throughput", width, height, "Finished episodes per day", desc), '<g class="grid">']
    parts += [f'<line x1="{left}" y1="{_num(base - t * y_scale)}" x2="{left + plot_w}" y2="{_num(base - t * y_scale)}"/>'
              for t in ticks[1:]]
    parts.append("</g><g>")
    for i, d in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = float(base)
        tip = f"{d.date.isoformat()}: {d.completed} finished" + (
            " (" + ", ".join(f"{n} {st}" for st, n in d.by_stage.items() if n) + ")" if d.completed else "")
        parts.append(f'<g class="day"><title>{_e(tip)}</title>')
        if not d.completed:  # an empty day still has a target for its tooltip
            parts.append(f'<rect x="{_num(x)}" y="{base - 2}" width="{_num(bar_w)}" height="2" fill="#eaeef2"/>')
        for stage, n in d.by_stage.items():
            if n:
                h = n * y_scale
                y -= h
                parts.append(f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" '
                             f'height="{_num(h)}" fill="{colours.get(stage, "#57606a")}"/>')
        parts.append("</g>")
    rate = s.estimate.rate_per_day
    if rate:
        y = base - rate * y_scale
        parts.append(f'<line x1="{left}" y1="{_num(y)}" x2="{left + plot_w}" y2="{_num(y)}" stroke="#bf8700" '
                     f'stroke-width="1.5" stroke-dasharray="6 4"><title>recent rate: {rate:g} per day'
                     f'</title></line>')
    parts.append(f'</g><g class="axis"><line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}"/></g><g class="tick">')
    for t in ticks:
        ty = _num(base - t * y_scale)
        parts.append(f'<line x1="{left - 5}" y1="{ty}" x2="{left}" y2="{ty}" stroke="#59636e"/>'
                     f'<text x="{left - 8}" y="{ty}" dy="4" text-anchor="end">{_e(_tick_label(t))}</text>')
    every = max(1, math.ceil(len(days) / 12))
    for i, d in enumerate(days):
        if (len(days) - 1 - i) % every == 0:  # always label today, the right-most day
            tx = _num(left + i * slot + slot / 2)
            parts.append(f'<line x1="{tx}" y1="{base}" x2="{tx}" y2="{base + 5}" stroke="#59636e"/>'
                         f'<text x="{tx}" y="{base + 18}" text-anchor="middle">{d.date.strftime("%b %d")}</text>')
    parts.append(f'</g><text class="axis-title" x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle">'
                 f'day (UTC)</text><text class="axis-title" transform="translate(14 {top + plot_h / 2:.0f}) '
                 f'rotate(-90)" text-anchor="middle">episodes finished</text></svg>')
    legend = "".join(f'<span><i style="background:{c}"></i>{_e(st)}</span>' for st, c in colours.items())
    if rate:
        legend += f'<span><i style="background:#bf8700"></i>recent rate, {rate:g} a day (basis of the estimate)</span>'
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), raw: bool = False) -> str:  # type: ignore[assignment]
    """A table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    cls = [' class="num"' if i in numeric else "" for i in range(len(head))]
    out = ["<table><thead><tr>", *(f"<th{cls[i]}>{_e(h)}</th>" for i, h in enumerate(head)), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls[i]}>{c if raw else _e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _data_details(head: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    return f"<details><summary>The numbers</summary>{_table(head, rows, numeric)}</details>"


def _meter(s: Summary, p: PipelineInfo) -> str:
    parts = []
    for stage in p.terminal:
        n = s.stages.get(stage, 0)
        if n and s.episodes:
            parts.append(f'<span style="width:{100 * n / s.episodes:.2f}%;background:{_stage_colour(p, stage)}" '
                         f'title="{_e(f"{stage}: {n}")}"></span>')
    return f'<div class="meter" aria-hidden="true">{"".join(parts)}</div>'


def _estimate_html(e: Estimate) -> str:
    if e.status == "done":
        return "done"
    if e.status == "unknown" or e.date is None:
        return "unknown"
    return e.date.isoformat()


def render_html(report: Report) -> str:
    """One self-contained page: no scripts, fonts, styles or images from elsewhere."""
    s, p, scope = report.totals, report.pipeline, report.scope
    now = report.generated_at
    where = f"show {scope.show}" if scope.show else f"{len(report.shows)} show(s)"
    failed_note = f"{s.failures:,} failures; most: {s.error_kinds[0].kind}" if s.error_kinds else "no failures"
    cards = [
        ("Episodes", f"{s.episodes:,}", where),
        ("Done", f"{s.completion_pct}%", f"{s.done:,} of {s.episodes:,} ({s.skipped:,} skipped)"),
        ("Remaining", f"{s.remaining:,}", f"{s.completed_in_window:,} finished in {scope.days} days"),
        ("Failure rate", f"{s.failure_rate_pct}%", failed_note),
        ("Cost", amount(s.cost_total), f"{len(s.cost_by_stage)} stage(s) with costs"),
        ("Estimated completion", _estimate_html(s.estimate),
         f"at {s.estimate.rate_per_day:g} per day" if s.estimate.rate_per_day else
         "all done" if s.estimate.status == "done" else "nothing finished recently"),
    ]
    body = ['<header><h1>Pipeline report</h1>',
            f'<p><code>{_e(report.store)}</code> &middot; pipeline <b>{_e(p.name)}</b> &middot; '
            f'{_e(where)} &middot; generated {_e(_when(now))} UTC &middot; throughput window '
            f'{_e(scope.start)} to {_e(scope.end)}</p></header>',
            '<section class="cards" aria-label="Summary">']
    body += [f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
             f'<div class="note">{_e(note)}</div></div>' for label, value, note in cards]
    body.append("</section>")

    body.append('<h2>Shows</h2><div class="panel">')
    rows = []
    for sh in report.shows:
        done_cell = (f'{sh.completion_pct}% <span class="note">({sh.done:,}/{sh.episodes:,})</span>'
                     f'{_meter(sh, p)}')
        rows.append([f'<code class="nowrap">{_e(sh.show_id)}</code>', _e(sh.title), f"{sh.episodes:,}", done_cell,
                     f"{sh.remaining:,}", f"{sh.failure_rate_pct}%", _e(amount(sh.cost_total)),
                     _e(_kinds_text(sh.error_kinds)), _e(_estimate_html(sh.estimate))])
    body.append(_table(["show", "title", "episodes", "done", "remaining", "failure rate", "cost", "top error kinds",
                        "estimated completion"], rows, {2, 4, 5, 6}, raw=True) if rows
                else '<p class="empty">No shows yet.</p>')
    body.append("</div>")

    funnel_rows = [[st, f"{n:,}", f"{_pct(n, s.episodes)}%"] for st, n in s.stages.items()]
    cost_rows = [[st, amount(c), f"{_pct_f(c, s.cost_total)}%"] for st, c in s.cost_by_stage.items()]
    day_rows = [[d.date.isoformat(), str(d.completed), *(str(d.by_stage.get(t, 0)) for t in p.terminal)]
                for d in s.throughput]
    legend = "".join(f'<span><i style="background:{c}"></i>{_e(label)}</span>' for label, c in (
        ("in progress", "#0969da"), ("finished", "#1a7f37"), ("failed", "#cf222e"), ("skipped", "#8c959f")))
    body += [
        '<h2>Progress</h2><div class="charts">',
        '<figure><figcaption>Stage funnel <span>&middot; where the episodes are now, in pipeline order'
        f'</span></figcaption>{_funnel_svg(report)}<div class="legend">{legend}</div>'
        f'{_data_details(["stage", "episodes", "share"], funnel_rows, {1, 2})}</figure>',
        '<figure><figcaption>Cost by stage <span>&middot; spent so far</span></figcaption>'
        + (_cost_svg(report) if cost_rows else '<p class="empty">Nothing has been spent yet.</p>')
        + (_data_details(["stage", "cost", "share"], cost_rows, {1, 2}) if cost_rows else "") + "</figure>",
        '<figure class="wide"><figcaption>Throughput <span>&middot; episodes reaching a terminal stage per day '
        f'(UTC), last {scope.days} days</span></figcaption>{_throughput_svg(report)}'
        f'{_data_details(["date", "finished", *p.terminal], day_rows, set(range(1, 2 + len(p.terminal))))}'
        "</figure></div>",
    ]

    body.append('<h2>Failures by kind</h2><div class="panel">')
    kinds = [[f"<code>{_e(k.kind)}</code>", f"{k.count:,}", f"{_pct(k.count, s.failures)}%"] for k in s.error_kinds]
    body.append(_table(["error kind", "failures", "share"], kinds, {1, 2}, raw=True) if kinds
                else '<p class="empty">No failures recorded.</p>')
    body.append("</div>")

    counts = ", ".join(f"{n:,} {REASON_TEXT[r]}" for r, n in report.attention_counts.items())
    body.append(f'<h2>Needs attention <span class="note">&middot; {report.attention_total:,} episode(s)'
                f'{": " + _e(counts) if counts else ""}</span></h2>'
                f'<p class="note">Worker stopped: its lease expired ({_e("statekit recover")} brings it back). '
                f'Stuck: no change for {scope.stuck_after_hours:g} h, outside the first and the terminal stages.</p>'
                '<div class="panel">')
    rows = []
    for a in report.attention:
        rows.append([f'<code><span class="nowrap">{_e(a.show_id)}/</span><wbr><span class="nowrap">'
                     f'{_e(a.episode_id)}</span></code>', _e(a.title), f"<code>{_e(a.stage)}</code>",
                     f'<span class="tag {_e(a.reason)}">{_e(REASON_TEXT[a.reason])}</span>',
                     f'<span class="nowrap" title="{_e(a.since.isoformat())}">{_e(_when(a.since))}</span>'
                     f'<br><span class="note">{_e(_age(now, a.since))} ago</span>',
                     str(a.error_count), f"<code>{_e(a.last_error_kind or '')}</code>",
                     f'<span class="msg">{_e(a.message or "")}</span>'])
    body.append(_table(["episode", "title", "stage", "why", "since (UTC)", "errors", "last error kind",
                        "message"], rows, {5}, raw=True) if rows
                else '<p class="empty">Nothing failed or stuck.</p>')
    if report.attention_truncated:
        body.append(f'<p class="empty">Showing the first {len(report.attention):,} of '
                    f'{report.attention_total:,}; see the JSON report or <code>statekit errors</code>.</p>')
    body.append("</div>")
    body.append(f'<footer>statekit {_e(report.statekit_version)} &middot; report format {report.format_version} '
                "&middot; all times UTC &middot; completion counts every terminal stage as done, "
                f"including {_e(p.give_up_stage or 'given-up episodes')}</footer>")
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(f'statekit report: {p.name}, {_when(now)} UTC')}</title>"
            f"<style>{_CSS}</style></head><body><main>" + "".join(body) + "</main></body></html>\n")
