"""Computing a report: the numbers, read from the index in one read
snapshot (nothing written), returned as a ``Report``. No rendering here.

Sources: counts and costs come from the index's per-stage totals; failures
and error kinds from each episode's ``error_history`` (the copy of the file
the index keeps in ``episodes.data``: the truth, including errors recorded
before statekit or by hand, which have no ``fail`` event); throughput from
the ``events`` table (moves into a terminal stage).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select

from ..errors import ValidationError
from ..index import tables
from .model import (
    ATTENTION_LIMIT,
    DEFAULT_DAYS,
    DEFAULT_STUCK_AFTER,
    ESTIMATE_ACTIVE_DAYS,
    MAX_MESSAGE,
    REASONS,
    AttentionItem,
    DayCount,
    Estimate,
    KindCount,
    PausedStage,
    PipelineInfo,
    Progress,
    Reason,
    Report,
    Scope,
    Summary,
    pct,
)

if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from ..store import Store



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
        totals=totals, shows=summaries, attention=[_item(*a) for a in found[:ATTENTION_LIMIT]],
        attention_counts={r: counts[r] for r in REASONS if counts[r]}, attention_total=len(found),
        attention_truncated=len(found) > ATTENTION_LIMIT,
        paused=[PausedStage(stage=x.stage, show=x.show, since=x.at, by=x.by, note=x.note) for x in store.paused()
                if show is None or x.show in (None, show)],
    )


class _Reading:
    """The queries of one report, on one connection (one read snapshot)."""

    def __init__(self, conn: Any, p: Pipeline, show: str | None, now: datetime, cutoff: datetime, start: date,
                 today: date) -> None:
        self.conn, self.p, self.show, self.now, self.cutoff = conn, p, show, now, cutoff
        self.start, self.today = start, today
        self.tallies: defaultdict[str, _Tally] = defaultdict(_Tally)
        self.attention: list[tuple[int, datetime, str, str, tuple[Any, ...]]] = []
        """(rank of the reason, since, show, episode, what else its item shows): sorted, the most
        urgent first; only the items listed are made (``_item``: a large store may have thousands)."""

    def _rows(self, stmt: Any, table: Any) -> Any:
        return self.conn.execute(stmt if self.show is None else stmt.where(table.c.show_id == self.show))

    def totals(self) -> dict[str, str]:
        """Episodes and cost per show and stage (the index keeps them summed); returns the show titles."""
        totals, t = tables.stage_totals, tables.stage_totals.c
        for show_id, stage, n, cost in self._rows(select(t.show_id, t.stage, t.episodes, t.cost), totals):
            tally = self.tallies[show_id]
            if n:
                tally.stages[stage] += int(n)
            if cost:
                tally.costs[stage] += float(cost)
        return dict(self._rows(select(tables.shows.c.show_id, tables.shows.c.title), tables.shows).all())

    def look(self, progress: Progress | None) -> None:
        """Read the file data of the episodes that failed or may need attention
        (no others), then the window's moves into a terminal stage."""
        p, e, v = self.p, tables.episodes.c, tables.events.c
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
                        for table, where in ((tables.episodes, or_(*closer)), (tables.events, moved)))
            progress(0, total)
        rows = self._rows(select(e.show_id, e.episode_id, e.title, e.stage, e.updated_at, e.stage_entered_at,
                                 e.lease_expires_at, e.data).where(or_(*closer)), tables.episodes)
        for row in rows:
            self._look_closer(*row)
            done += 1
            if progress is not None and done % 500 == 0:
                progress(done, total)
        seen: set[tuple[str, str, date, str]] = set()
        for show_id, ep_id, at, to_stage in self._rows(select(v.show_id, v.episode_id, v.at, v.to_stage)
                                                       .where(moved), tables.events):
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
        self.attention.append((REASONS.index(reason), since, show_id, ep_id,
                               (title, stage, updated_at, len(errors), last.get("kind"),
                                (data.get("hold"), last.get("message"), data.get("message")))))


def _item(rank: int, since: datetime, show_id: str, ep_id: str, seen: tuple[Any, ...]) -> AttentionItem:
    """An entry of ``_Reading.attention`` as the report lists it."""
    title, stage, updated_at, error_count, kind, messages = seen
    return AttentionItem(
        show_id=show_id, episode_id=ep_id, title=title or "", stage=stage, reason=REASONS[rank], since=since,
        updated_at=updated_at, error_count=error_count, last_error_kind=str(kind) if kind else None,
        message=next((short for short in map(_short, messages) if short), None))


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
        succeeded=done - skipped, remaining=episodes - done, completion_pct=pct(done, episodes),
        succeeded_pct=pct(done - skipped, episodes), failures=tally.failures,
        episodes_with_failures=tally.with_failures, failure_rate_pct=pct(tally.with_failures, episodes),
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

