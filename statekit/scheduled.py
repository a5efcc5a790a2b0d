"""The jobs ``statekit serve`` runs on schedule while it runs: the daily (and
weekly) report and the daily compaction.

``start(store)`` starts a background thread; ``Scheduler.stop()`` ends it.
Every ``poll`` seconds it asks which jobs are due (``due``) and runs them
(``run_due``); a job that fails is logged and tried again at the next poll
that finds it due. All times are UTC.

- **daily report** (``reporting: {generate_daily: true}``): due once the day's
  ``at`` time (default 00:05) has passed and ``reports/daily_report_<day>.<ext>``
  does not exist yet (so a report cron already wrote is not written twice, and
  a server started late in the day writes the day's report at once).
- **weekly report** (``generate_weekly: true``): the same, for the ISO week's file.
- **compact** (``retention: {compress_old: true}``): once a day after ``at``
  (and when the server starts), ``Store.compact`` with ``older_than``.

Without a ``reporting:`` or ``retention:`` section nothing is written: a store
says what it wants scheduled. Reports and compaction write through the same
paths as ``statekit report --daily`` and ``statekit compact``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import date, datetime, time, timezone
from typing import TYPE_CHECKING

from .report.writing import scheduled_path, write_scheduled

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("statekit")

POLL_SECONDS = 60.0
DEFAULT_AT = "00:05"


class Scheduler:
    """Runs the store's scheduled jobs; ``start``/``stop`` a background thread,
    or call ``run_due(now)`` directly."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] | None = None,
                 poll: float = POLL_SECONDS) -> None:
        self.store = store
        self.clock = clock or store.clock
        self.poll = poll
        self.compacted_on: date | None = None
        self.ran: list[tuple[str, datetime]] = []
        """(job, when) of every job run, newest last (for tests and logs)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _after_at(self, now: datetime) -> bool:
        reporting = self.store.config.reporting
        hh, mm = (reporting.at if reporting is not None else DEFAULT_AT).split(":")
        return now.timetz().replace(tzinfo=None) >= time(int(hh), int(mm))

    def due(self, now: datetime) -> list[str]:
        """The jobs due at ``now`` (``daily``, ``weekly``, ``compact``)."""
        now = now.astimezone(timezone.utc)
        config = self.store.config
        jobs = []
        reporting = config.reporting
        if reporting is not None and self._after_at(now):
            for period, wanted in (("daily", reporting.generate_daily), ("weekly", reporting.generate_weekly)):
                if wanted and not os.path.lexists(
                        scheduled_path(self.store, period, now.date(), reporting.report_format)):
                    jobs.append(period)
        retention = config.retention
        if retention is not None and retention.compress_old and self.compacted_on != now.date() and (
                self.compacted_on is None or self._after_at(now)):
            jobs.append("compact")
        return jobs

    def run_due(self, now: datetime | None = None) -> list[str]:
        """Run the jobs due at ``now`` (default: the clock); returns those that ran."""
        now = (now or self.clock()).astimezone(timezone.utc)
        done = []
        for job in self.due(now):
            try:
                if job == "compact":
                    report = self.store.compact()
                    self.compacted_on = now.date()
                    log.info("statekit: compacted %d episodes, saved %d bytes", len(report.compacted), report.saved)
                else:
                    paths = write_scheduled(self.store, job, now=now)
                    log.info("statekit: wrote %s", paths[0])
            except Exception as exc:  # a scheduled job never stops the server: tried again at the next poll
                log.warning("statekit: scheduled %s failed (%s: %s); trying again in %.0f s", job,
                            type(exc).__name__, exc, self.poll)
                continue
            self.ran.append((job, now))
            done.append(job)
        return done

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            self._stop.wait(self.poll)

    def start(self) -> Scheduler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="statekit-scheduled", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it (a job under way finishes first, up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def start(store: Store, **kw: object) -> Scheduler:
    """A started ``Scheduler`` for ``store`` (``kw``: ``clock``, ``poll``)."""
    return Scheduler(store, **kw).start()  # type: ignore[arg-type]
