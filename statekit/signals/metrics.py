"""Prometheus metrics, read from the index at scrape time (``prometheus_client``).

Nothing is counted in memory: every number is a query on the index (or
``signals.db``), so any number of worker processes need no shared metrics
state, and a scrape after a restart sees the same values. Names:

- ``statekit_episodes{show,stage}``, ``statekit_cost_total{show,stage}``
  (the index's per-stage totals);
- ``statekit_oldest_waiting_seconds{stage}``: the longest an episode ready
  for a stage has waited for it;
- ``statekit_leases{state="live|expired"}``;
- ``statekit_runs_total{stage,outcome="succeeded|failed"}`` and
  ``statekit_failures_total{stage,kind}`` (the index's events, as ``run_totals``
  counts them when they are written: a scrape reads a few rows, not every event);
- ``statekit_index_drift`` (0/1 from the last ``verify``, kept in the index, with
  ``statekit_index_verified_timestamp_seconds``);
- ``statekit_alerts_pending``; ``statekit_build_info{version,python,index}``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from ..index.tables import RUN_FAILED, episodes, index_meta, run_totals, stage_totals
from .alerts import needs
from .state import State, db_path

if TYPE_CHECKING:
    from ..writes import Writer

NAMES = (
    "statekit_episodes", "statekit_cost_total", "statekit_oldest_waiting_seconds", "statekit_leases",
    "statekit_runs_total", "statekit_failures_total", "statekit_index_drift",
    "statekit_index_verified_timestamp_seconds", "statekit_alerts_pending", "statekit_build_info",
)
"""The sample names the exporter serves (docs/grafana-dashboard.json uses only these)."""

log = logging.getLogger("statekit")

VERIFY_KEY = "last_verify"


def record_verify(writer: Writer, problems: int, at: datetime) -> None:
    """Keep the last ``verify``'s outcome in the index (``index_meta``) for ``statekit_index_drift``."""
    value = json.dumps({"problems": problems, "at": at.timestamp()})
    try:
        with writer.index.engine.begin() as conn:
            conn.execute(index_meta.delete().where(index_meta.c.key == VERIFY_KEY))
            conn.execute(index_meta.insert().values(key=VERIFY_KEY, value=value))
    except (SQLAlchemyError, OSError) as exc:  # a store read-only to this user: verify still reports
        log.info("statekit: the index did not keep the verify's outcome (%s)", exc)


class Collector:
    """A ``prometheus_client`` collector whose values come from one store's index."""

    def __init__(self, writer: Writer, version: str) -> None:
        self.writer = writer
        self.version = version

    def describe(self) -> list[Any]:
        return []  # no names registered ahead: collect() is called at scrape time only

    def collect(self) -> Iterator[Any]:
        core = needs("prometheus_client.core", "metrics")
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        now = datetime.now(timezone.utc)
        count = gauge("statekit_episodes", "Episodes per show and stage.", labels=["show", "stage"])
        cost = counter("statekit_cost", "Money spent per show and stage.", labels=["show", "stage"])
        waiting = gauge("statekit_oldest_waiting_seconds", "How long the oldest episode ready for a stage has "
                        "waited.", labels=["stage"])
        leases = gauge("statekit_leases", "Episodes held by a run, by lease state.", labels=["state"])
        runs = counter("statekit_runs", "Stage runs that ended, by outcome.", labels=["stage", "outcome"])
        failures = counter("statekit_failures", "Failed stage runs, by error kind.", labels=["stage", "kind"])
        e, r = episodes.c, run_totals.c
        with self.writer.index.reading() as conn:
            for show, stage, n, spent in conn.execute(select(stage_totals)):
                count.add_metric([show, stage], n)
                cost.add_metric([show, stage], spent)
            for stage, oldest in sorted(oldest_waiting(conn).items()):
                waiting.add_metric([stage], max((now - oldest).total_seconds(), 0.0))
            live = expired = 0
            # (every lease a file records has its expiry: the few leased rows, from ``episodes_leased``)
            for (expires,) in conn.execute(select(e.lease_expires_at).where(e.lease_expires_at.is_not(None))):
                if _aware(expires) > now:
                    live += 1
                else:
                    expired += 1
            leases.add_metric(["live"], live)
            leases.add_metric(["expired"], expired)
            ended: dict[tuple[str, str], int] = defaultdict(int)
            failed: dict[tuple[str, str], int] = defaultdict(int)
            for stage, kind, error_kind, n in conn.execute(  # (a few rows: the events counted as written)
                    select(r.stage, r.kind, r.error_kind, func.sum(r.runs)).where(r.runs > 0)
                    .group_by(r.stage, r.kind, r.error_kind)):
                ended[stage, "succeeded" if kind == "finish" else "failed"] += int(n)
                if kind in RUN_FAILED:
                    failed[stage, error_kind] += int(n)
            for labels, n in sorted(ended.items()):
                runs.add_metric(list(labels), n)
            for labels, n in sorted(failed.items()):
                failures.add_metric(list(labels), n)
            drift = list(self._drift(conn, gauge))
        yield from (count, cost, waiting, leases, runs, failures, *drift)
        yield from self._signals(gauge)
        info = core.InfoMetricFamily("statekit_build", "statekit's version.")
        info.add_metric([], {"version": self.version, "python": platform.python_version(),
                             "index": self.writer.index.engine.dialect.name})
        yield info

    def _drift(self, conn: Any, gauge: Any) -> Iterator[Any]:
        last = conn.execute(select(index_meta.c.value).where(index_meta.c.key == VERIFY_KEY)).scalar()
        if last is not None:
            verified = json.loads(last)
            yield gauge("statekit_index_drift", "1 if the last verify found problems, else 0.",
                        value=1 if verified["problems"] else 0)
            yield gauge("statekit_index_verified_timestamp_seconds", "When the last verify ran.",
                        value=verified["at"])

    def _signals(self, gauge: Any) -> Iterator[Any]:
        if not os.path.exists(db_path(self.writer.root)):  # no signals yet: nothing pending (and no file made)
            yield gauge("statekit_alerts_pending", "Alerts recorded and not yet delivered.", value=0)
            return
        state = State(self.writer.root)
        try:
            yield gauge("statekit_alerts_pending", "Alerts recorded and not yet delivered.",
                        value=state.pending_count())
        finally:
            state.close()


_e = episodes.c
_NEXT_STAGE = select(func.min(_e.ready_for)).where(_e.ready_for > bindparam("after"))
_TOP_PRIORITY = select(func.max(_e.priority)).where(_e.ready_for == bindparam("stage"))
_NEXT_PRIORITY = select(func.max(_e.priority)).where(_e.ready_for == bindparam("stage"),
                                                     _e.priority < bindparam("below"))
_OLDEST = (select(_e.stage_entered_at)
           .where(_e.ready_for == bindparam("stage"), _e.priority == bindparam("priority"),
                  _e.due_at.is_(None), _e.lease_owner.is_(None))
           .order_by(_e.stage_entered_at).limit(1))
_DUE = ("SELECT ready_for, due_at FROM episodes{hint} "
        "WHERE due_at IS NOT NULL AND ready_for IS NOT NULL AND lease_owner IS NULL")
"""The rows in a retry's backoff, from ``episodes_due`` (named to SQLite: statistics taken while
most rows were ready for one stage make a walk of ``episodes_by_ready_for`` look cheaper)."""


def oldest_waiting(conn: Any) -> dict[str, datetime]:
    """Per stage, since when the episode that has waited longest for it has waited: of the
    episodes ready for it and not leased, the earliest of each one's ``due_at`` (a retry's
    backoff) or else its ``stage_entered_at``. Read in steps of the indexes, not from every
    ready row: ``episodes_by_ready_for`` gives the stages, each stage's priorities and, in
    each, the first row in that order held by no run and in no backoff (the walk passes over
    the others before it); ``episodes_due`` the rows in backoff (revision 0012)."""
    found: dict[str, datetime] = {}

    def earliest(stage: str, moment: Any) -> None:
        if moment is not None:
            moment = _aware(moment)
            if stage not in found or moment < found[stage]:
                found[stage] = moment

    stage = conn.execute(_NEXT_STAGE, {"after": ""}).scalar()
    while stage is not None:
        priority = conn.execute(_TOP_PRIORITY, {"stage": stage}).scalar()
        while priority is not None:
            earliest(stage, conn.execute(_OLDEST, {"stage": stage, "priority": priority}).scalar())
            priority = conn.execute(_NEXT_PRIORITY, {"stage": stage, "below": priority}).scalar()
        stage = conn.execute(_NEXT_STAGE, {"after": stage}).scalar()
    hint = " INDEXED BY episodes_due" if conn.dialect.name == "sqlite" else ""
    for stage, due in conn.execute(text(_DUE.format(hint=hint)).columns(_e.ready_for, _e.due_at)):
        earliest(stage, due)
    return found


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def registry(writer: Writer, version: str) -> Any:
    """A registry holding only this store's collector."""
    client = needs("prometheus_client", "metrics")
    reg = client.CollectorRegistry(auto_describe=False)
    reg.register(Collector(writer, version))
    return reg


def exposition(writer: Writer, version: str) -> bytes:
    """The metrics in Prometheus' text format (``statekit metrics``, ``/metrics``)."""
    client = needs("prometheus_client", "metrics")
    return client.generate_latest(registry(writer, version))  # type: ignore[no-any-return]
