"""What the dashboard shows, read from a store opened read-only (``Store.open(root,
read_only=True)``): the report, the episodes of a stage (searched), one episode with
its history, and the *version* the page polls to know when to fetch again.

Nothing here writes: the index is opened ``mode=ro`` / read-only transactions and
the store's ``Disk`` refuses every write.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select

from ..errors import CorruptFileError, ValidationError
from ..history import Change, field_changes
from ..ids import check_id
from ..index.db import SHOW_ORDER
from ..index.rows import from_iso
from ..index.scan import index_path
from ..index.tables import episodes, events, stage_totals
from ..report.compute import build_report

if TYPE_CHECKING:
    from ..models import Episode, Event
    from ..report.model import Report
    from ..store import Store

VERSION_SECONDS = 0.5
"""The version is asked of the index at most this often, however many pages poll it."""
TIME_BUCKET_SECONDS = 60
"""The version also moves this often: 'stuck' and expired leases change with time alone."""
LIST_LIMIT = 200
"""At most this many episodes are listed on a page (all are counted)."""
MAX_QUERY = 200


@dataclass
class Row:
    """An episode in a list (the index's columns; no file read)."""

    show_id: str
    episode_id: str
    title: str
    stage: str
    version: int
    updated_at: datetime
    cost_total: float
    attempts_total: int
    error_count: int


@dataclass
class Listing:
    """The episodes matching a list page's filters: the first ``LIST_LIMIT``, and how many in all."""

    show: str | None
    stage: str | None
    query: str
    rows: list[Row]
    total: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)


@dataclass
class Step:
    """One committed change: its event and, where the log rebuilds versions, the fields it changed."""

    event: Event
    changes: list[Change] = field(default_factory=list)


@dataclass
class EpisodePage:
    episode: Episode
    steps: list[Step]
    """Newest first."""
    rebuilt: bool
    """True if the log rebuilds every version (a ledger store): ``changes`` are filled."""


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_patterns(text: str) -> list[str]:
    """The LIKE patterns a search for ``text`` tries (any one matching will do), any case of it
    meant. The database's LIKE (SQLite's; ILIKE in PostgreSQL) ignores the case of ASCII letters
    itself, but not always of the others (SQLite never does; PostgreSQL by its locale): a text
    with other letters is tried as typed, and in lower, upper and title case."""
    if text.isascii():
        return [_like(text)]
    return list(dict.fromkeys(_like(t) for t in (text, text.lower(), text.upper(), text.title())))


class Dashboard:
    """The dashboard's reads of one read-only ``store``; safe to share between threads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._computing = threading.Lock()
        self._checked = -1.0
        self._version = ""
        self._identity: tuple[int, int] | None = None
        self._report: tuple[str, Report] | None = None

    def close(self) -> None:
        self.store.close()

    def forget(self) -> None:
        """Drop the cached version and report: the next call asks the index."""
        with self._lock:
            self._checked, self._report = -1.0, None

    # --- the version the page polls ------------------------------------------------

    def _file_identity(self) -> tuple[int, int] | None:
        """The SQLite index's inode: ``rebuild-index`` swaps a new file in, and a
        connection kept open would go on reading the old one."""
        if self.store.index_url is not None:
            return None
        try:
            st = os.stat(index_path(self.store.root))
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def version(self) -> str:
        """A short text that changes whenever the index does (any commit adds an
        event; a delete changes the stage totals; a rebuild swaps the file) and every
        ``TIME_BUCKET_SECONDS``. Asked of the index at most every ``VERSION_SECONDS``."""
        with self._lock:
            now = time.monotonic()
            if self._version and now - self._checked < VERSION_SECONDS:
                return self._version
            identity = self._file_identity()
            if identity != self._identity:
                if self._identity is not None:
                    self.store.index.close()  # reconnects to the rebuilt file on next use
                self._identity = identity
            with self.store.index.reading() as conn:
                last = conn.execute(select(func.max(events.c.id))).scalar()
                n, cost = conn.execute(select(func.coalesce(func.sum(stage_totals.c.episodes), 0),
                                              func.coalesce(func.sum(stage_totals.c.cost), 0.0))).one()
            state = (identity, last, int(n), round(float(cost), 6), int(time.time() // TIME_BUCKET_SECONDS))
            self._version = hashlib.sha256(repr(state).encode()).hexdigest()[:16]
            self._checked = now
            return self._version

    # --- pages ---------------------------------------------------------------------

    def report(self) -> Report:
        """The report (``report.compute``), computed again only when the version moved
        (about a second for 20,000 episodes: ``benchmarks/bench_dashboard.py``)."""
        version = self.version()
        with self._computing:  # many pages polling one change: the report is computed once
            cached = self._report
            if cached is not None and cached[0] == version:
                return cached[1]
            report = build_report(self.store)
            self._report = (version, report)
            return report

    def episodes(self, *, show: str | None = None, stage: str | None = None, query: str = "") -> Listing:
        """Episodes of ``show`` and ``stage`` (either may be None: all) whose id, title
        or show contains ``query`` (any case), in show order; from the index only."""
        if stage is not None:
            self.store.writer.check_stage(stage)
        if show is not None:
            self.store.counts(show)  # checks the id and that the show exists
        if not isinstance(query, str) or len(query) > MAX_QUERY:
            raise ValidationError(f"search text must be at most {MAX_QUERY} characters", field="q")
        where = []
        if show is not None:
            where.append(episodes.c.show_id == show)
        if stage is not None:
            where.append(episodes.c.stage == stage)
        text = query.strip()
        if text:
            # the columns as they are (no lower() on each row): SQLite reads them from the show-order
            # index, which holds the title (revision 0013)
            sqlite = self.store.index.dialect == "sqlite"
            where.append(or_(*((c.like(p, escape="\\") if sqlite else c.ilike(p, escape="\\"))
                               for p in search_patterns(text)
                               for c in (episodes.c.episode_id, episodes.c.title, episodes.c.show_id))))
        columns = [episodes.c.show_id, episodes.c.episode_id, episodes.c.title, episodes.c.stage,
                   episodes.c.version, episodes.c.updated_at, episodes.c.cost_total, episodes.c.attempts_total,
                   episodes.c.error_count]
        # read through the index named to SQLite: a stage of a few rows among a show's 100,000 is not
        # found by walking the show
        index = self.store.index
        found = index.stage_rows(select(*columns).where(*where).order_by(*SHOW_ORDER).limit(LIST_LIMIT),
                                 stage, show, LIST_LIMIT)
        if text:
            total = index.stage_rows(select(func.count()).select_from(episodes).where(*where), stage, show, None)[0][0]
        else:  # the totals the index keeps with every write: no row read
            counted = select(func.sum(stage_totals.c.episodes)).where(
                *([stage_totals.c.show_id == show] if show is not None else []),
                *([stage_totals.c.stage == stage] if stage is not None else []))
            with index.reading() as conn:
                total = conn.execute(counted).scalar()
        rows = [Row(show_id, ep, title or "", in_stage, version, from_iso(updated) if isinstance(updated, str)
                    else updated, cost or 0.0, attempts or 0, errors or 0)
                for show_id, ep, title, in_stage, version, updated, cost, attempts, errors in found]
        return Listing(show, stage, query.strip(), rows, total or 0)

    def episode(self, show: str, ep: str) -> EpisodePage:
        """One episode's committed state (its file) and its history (its log), newest first.
        ``InvalidIdError`` for a bad id, ``EpisodeNotFoundError`` if there is no such episode."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        episode = self.store.get(show, ep)
        log = self.store.events(show, ep)
        changes: dict[int, list[Change]] = {}
        rebuilt = False
        try:
            versions = self.store.versions.versions(show, ep)
        except CorruptFileError:  # a log from before the ledger: the events alone
            versions = []
        if versions:
            rebuilt = True
            before: dict[str, Any] = {}
            for number, data in versions:
                changes[number] = [c for c in field_changes(before, data)
                                   if c.field not in ("version", "updated_at", "schema_version")]
                before = data
        steps = [Step(e, changes.get(e.version, [])) for e in reversed(log)]
        return EpisodePage(episode, steps, rebuilt)
