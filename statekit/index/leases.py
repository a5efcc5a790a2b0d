"""Live leases of stage runs in the index (table ``leases``): take, claim, renew, release.

The lease is coordination state: a run takes its row here first (in one
write transaction), then writes its start to the episode file through the
write path; it renews the row in the background (no file write, no event)
and deletes it when it ends. A claimer that dies in between leaves a row
that simply expires.

Expiry is judged by the database's clock: PostgreSQL's ``clock_timestamp()``,
never a worker's (workers on many machines disagree about the time). An
SQLite index lives on one machine: there the store's clock is the
database's (tests pass a fake one).

While a row exists it decides who holds the episode; a file's lease of
another run has been taken over. With no row (never taken here) the lease
the episode file records counts, as before.

A rebuild keeps the rows (``kept`` then ``restore``): they are not derived
from the files, and a live run must not lose its lease to a rebuild. An
episode whose file records a live lease but that has no row (the old index
was lost) gets one from its file, expiring when the file says: a run whose
renewals were lost with the old index counts from its last write, at most
one lease length late.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, not_, or_, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import IndexUnavailableError
from ..models import ClaimRefused as Refused
from ..serverlocks import lock_key
from .dialect import WRITE
from .tables import episodes, events, leases, run_starts

log = logging.getLogger("statekit")

CLAIM_ROUNDS = 100
"""How often a PostgreSQL claim looks again after losing an episode to another claimer."""


@dataclass(frozen=True)
class Holder:
    """Who holds an episode's lease row, and whether it is live at ``now``
    (the database's time when it was asked)."""

    run_id: str
    owner: str
    stage: str
    expires_at: datetime
    now: datetime

    @property
    def alive(self) -> bool:
        return self.now < self.expires_at


def window_text(seconds: int) -> str:
    names = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    return names.get(seconds, f"{seconds} s")


class LeaseTable:
    """The ``leases`` table of one index database."""

    def __init__(self, engine: Engine, kept: Callable[[], Connection | None] | None = None) -> None:
        self.engine = engine
        self.kept = kept
        """This thread's connection, kept open (``Index._conn``; None: there is none): a run's
        lease calls on the worker's thread use it (an SQLite connection costs more to open than
        their queries, about 0.3 ms, four times a run). A renewal with ``fresh=True`` (a run's
        ``Renewer``, on a thread of its own that ends with the run) opens a new one."""
        self.server = engine.dialect.name != "sqlite"
        insert = postgresql.insert if self.server else sqlite.insert
        self._insert = insert

    # --- the clock ------------------------------------------------------------------

    def now(self, conn: Connection, local: datetime) -> datetime:
        """The database's time: the server's clock, or ``local`` for SQLite."""
        return self.now_of(conn, self.server, local)

    @staticmethod
    def now_of(conn: Connection, server: bool, local: datetime) -> datetime:
        if server:
            value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar()
            assert isinstance(value, datetime)
            return value.astimezone(timezone.utc)
        return local.astimezone(timezone.utc)

    @contextmanager
    def _session(self, *, write: bool = False, fresh: bool = False) -> Iterator[Connection]:
        """One transaction (``write``: ``BEGIN IMMEDIATE`` in SQLite), committed at its end, on
        the thread's kept connection, or on a new one (none kept, ``fresh``, or the kept one is
        inside a transaction of its caller's)."""
        conn = None if fresh or self.kept is None else self.kept()
        if conn is None or conn.in_transaction() or getattr(conn.connection.driver_connection, "in_transaction", False):
            with self.engine.connect() as new:
                if write:
                    new.execution_options(**WRITE)
                with new.begin():
                    yield new
            return
        if write:
            conn.execution_options(**WRITE)  # (in place: the kept connection's next transactions read)
        try:
            with conn.begin():
                yield conn
        finally:
            if write:
                conn.execution_options(statekit_write=False)

    def _failed(self, what: str, exc: Exception) -> IndexUnavailableError:
        return IndexUnavailableError(f"the index could not {what}: {' '.join(str(exc).split())}")

    # --- one episode -------------------------------------------------------------------

    def holder(self, show: str, ep: str, local: datetime) -> tuple[Holder | None, datetime]:
        """The episode's lease row (None if it has none) and the database's time."""
        try:
            with self._session() as conn:
                now = self.now(conn, local)
                row = conn.execute(select(leases.c.run_id, leases.c.owner, leases.c.stage, leases.c.expires_at)
                                   .where(leases.c.show_id == show, leases.c.episode_id == ep)).first()
        except SQLAlchemyError as exc:
            raise self._failed("read a lease", exc) from exc
        if row is None:
            return None, now
        return Holder(row[0], row[1], row[2], row[3], now), now

    def _upsert(self, conn: Connection, values: dict[str, Any], now: datetime) -> bool:
        """Insert the row, or take over one that expired or is this run's; True if it is ours now."""
        stmt = self._insert(leases).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["show_id", "episode_id"],
            set_={k: stmt.excluded[k] for k in ("run_id", "owner", "stage", "lease_seconds", "expires_at")},
            where=or_(leases.c.expires_at <= now, leases.c.run_id == values["run_id"]),
        ).returning(leases.c.run_id)
        return conn.execute(stmt).first() is not None

    def take(self, show: str, ep: str, *, run_id: str, owner: str, stage: str, seconds: float,
             local: datetime, rate_window: int | None = None) -> Holder | None:
        """Lease the episode to ``run_id`` (None) unless a live run holds it
        (its ``Holder``): a live row, or with no row the lease its file records.
        ``rate_window``: the stage has a rate limit; the start counts against it."""
        try:
            with self._session(write=True) as conn:
                now = self.now(conn, local)
                row = conn.execute(select(episodes.c.lease_owner, episodes.c.lease_expires_at, episodes.c.stage)
                                   .where(episodes.c.show_id == show, episodes.c.episode_id == ep)).first()
                current = conn.execute(select(leases.c.run_id).where(leases.c.show_id == show,
                                                                    leases.c.episode_id == ep)).first()
                if current is None and row is not None and row[1] is not None and row[1] > now:
                    return Holder("", row[0] or "", row[2], row[1], now)  # a run the file records, without a row
                values = {"show_id": show, "episode_id": ep, "run_id": run_id, "owner": owner, "stage": stage,
                          "lease_seconds": seconds, "expires_at": now + timedelta(seconds=seconds)}
                if self._upsert(conn, values, now):
                    if rate_window is not None:
                        self._started(conn, run_id, stage, now, (show, ep), rate_window)
                    return None
                held = conn.execute(select(leases.c.run_id, leases.c.owner, leases.c.stage, leases.c.expires_at)
                                    .where(leases.c.show_id == show, leases.c.episode_id == ep)).first()
        except SQLAlchemyError as exc:
            raise self._failed("take a lease", exc) from exc
        if held is None:  # released meanwhile: free now
            return self.take(show, ep, run_id=run_id, owner=owner, stage=stage, seconds=seconds, local=local,
                             rate_window=rate_window)
        return Holder(held[0], held[1], held[2], held[3], now)

    def renew(self, show: str, ep: str, run_id: str, seconds: float, local: datetime, *, owner: str,
              stage: str, fresh: bool = False) -> bool:
        """Extend ``run_id``'s live lease by ``seconds`` from now; False if it
        is not live any more (expired, or another run's). A row a rebuild
        dropped is put back, unless another run took the episode meanwhile. ``fresh``: on a
        connection of its own (see ``kept``)."""
        try:
            with self._session(write=True, fresh=fresh) as conn:
                now = self.now(conn, local)
                until = now + timedelta(seconds=seconds)
                done = conn.execute(
                    leases.update()
                    .where(leases.c.show_id == show, leases.c.episode_id == ep, leases.c.run_id == run_id,
                           leases.c.expires_at > now)
                    .values(expires_at=until, lease_seconds=seconds)).rowcount
                if done:
                    return True
                if conn.execute(select(leases.c.run_id).where(leases.c.show_id == show,
                                                              leases.c.episode_id == ep)).first() is not None:
                    return False
                stmt = self._insert(leases).values(show_id=show, episode_id=ep, run_id=run_id, owner=owner,
                                                   stage=stage, lease_seconds=seconds, expires_at=until)
                return bool(conn.execute(stmt.on_conflict_do_nothing()).rowcount)
        except SQLAlchemyError as exc:
            raise self._failed("renew a lease", exc) from exc

    def holds(self, show: str, ep: str, run_id: str, local: datetime) -> bool:
        """True unless another run's row, or an expired one, says ``run_id``
        lost the episode (no row: the file's lease, already checked, decides)."""
        holder, _ = self.holder(show, ep, local)
        return holder is None or (holder.run_id == run_id and holder.alive)

    def release(self, show: str, ep: str, run_id: str) -> None:
        """Delete ``run_id``'s row of the episode (another run's is left alone)."""
        try:
            with self._session(write=True) as conn:
                conn.execute(delete(leases).where(leases.c.show_id == show, leases.c.episode_id == ep,
                                                  leases.c.run_id == run_id))
        except SQLAlchemyError as exc:
            raise self._failed("release a lease", exc) from exc

    # --- many episodes -------------------------------------------------------------------

    def claim(self, stage: str, *, run_id: str, owner: str, seconds: float, local: datetime,
              show: str | None = None, exclude: Sequence[tuple[str, str]] = (), skip_shows: Sequence[str] = (),
              concurrency: int | None = None, rate: tuple[int, int] | None = None,
              ) -> tuple[str, str] | Refused | None:
        """Lease the episode ready for ``stage`` with the highest priority,
        then the longest-waiting, to ``run_id`` in one step; its (show,
        episode), None when none is ready, or ``Refused`` when the stage is at
        its ``concurrency`` (live runs) or ``rate`` ((starts, seconds) in the
        sliding window) limit. ``skip_shows``: shows not to hand out (paused).

        SQLite: one write transaction (one writer at a time), so the answer
        and the lease cannot be split by another claimer. PostgreSQL: the
        candidate's index row is locked ``FOR UPDATE SKIP LOCKED`` (claimers
        pass each other's candidates by), and the lease row is inserted only
        where none is live; losing that race means looking again. A limited
        stage's claims also take a transaction-scoped advisory lock of the
        stage first, so counting the live runs (or the starts) and taking the
        lease cannot be split either: two claimers racing for the last slot
        are served one after the other, and the second is refused."""
        limited = concurrency is not None or rate is not None
        try:
            for _ in range(CLAIM_ROUNDS):
                with self._session(write=True) as conn:
                    if limited and self.server:  # released when the transaction ends
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                     {"key": lock_key("stage-limit:" + stage)})
                    now = self.now(conn, local)
                    if limited:
                        refused = self._over_limit(conn, stage, now, concurrency, rate)
                        if refused is not None:
                            return refused
                    free = or_(
                        and_(leases.c.show_id.is_(None),
                             or_(episodes.c.lease_expires_at.is_(None), episodes.c.lease_expires_at <= now)),
                        leases.c.expires_at <= now)
                    stmt = (
                        select(episodes.c.show_id, episodes.c.episode_id)
                        .select_from(episodes.outerjoin(leases, and_(leases.c.show_id == episodes.c.show_id,
                                                                      leases.c.episode_id == episodes.c.episode_id)))
                        .where(episodes.c.ready_for == stage)
                        .where(or_(episodes.c.due_at.is_(None), episodes.c.due_at <= now))
                        .where(free)
                        .order_by(episodes.c.priority.desc(), episodes.c.stage_entered_at, episodes.c.show_id,
                                  episodes.c.episode_id)
                        .limit(1)
                    )
                    if show is not None:
                        stmt = stmt.where(episodes.c.show_id == show)
                    for paused in skip_shows:
                        stmt = stmt.where(episodes.c.show_id != paused)
                    for s, e in exclude:
                        stmt = stmt.where(not_(and_(episodes.c.show_id == s, episodes.c.episode_id == e)))
                    if self.server:
                        stmt = stmt.with_for_update(skip_locked=True, of=episodes)
                    found = conn.execute(stmt).first()
                    if found is None:
                        return None
                    values = {"show_id": found[0], "episode_id": found[1], "run_id": run_id, "owner": owner,
                              "stage": stage, "lease_seconds": seconds,
                              "expires_at": now + timedelta(seconds=seconds)}
                    if self._upsert(conn, values, now):
                        if rate is not None:
                            self._started(conn, run_id, stage, now, (found[0], found[1]), rate[1])
                        return found[0], found[1]
            return None
        except SQLAlchemyError as exc:
            raise self._failed("claim an episode", exc) from exc

    # --- limits ------------------------------------------------------------------------

    def live_runs(self, conn: Connection, stage: str, now: datetime) -> int:
        """Runs of ``stage`` live at ``now``: lease rows, and leases files record
        without a row (a rebuild dropped it; the run puts it back when it renews)."""
        rows = conn.execute(select(func.count()).select_from(leases)
                            .where(leases.c.stage == stage, leases.c.expires_at > now)).scalar() or 0
        unrowed = conn.execute(
            select(func.count()).select_from(
                episodes.outerjoin(leases, and_(leases.c.show_id == episodes.c.show_id,
                                                leases.c.episode_id == episodes.c.episode_id)))
            .where(episodes.c.stage == stage, episodes.c.lease_expires_at > now, leases.c.show_id.is_(None))
        ).scalar() or 0
        return int(rows) + int(unrowed)

    def starts(self, conn: Connection, stage: str, now: datetime, window: int) -> list[datetime]:
        """When the runs of ``stage`` started in the ``window`` seconds before ``now``, oldest first."""
        since = now - timedelta(seconds=window)
        return [row[0] for row in conn.execute(
            select(run_starts.c.started_at).where(run_starts.c.stage == stage, run_starts.c.started_at > since)
            .order_by(run_starts.c.started_at))]

    def _over_limit(self, conn: Connection, stage: str, now: datetime, concurrency: int | None,
                    rate: tuple[int, int] | None) -> Refused | None:
        if concurrency is not None:
            live = self.live_runs(conn, stage, now)
            if live >= concurrency:
                return Refused("concurrency", f"stage {stage!r} is at its concurrency limit: {live} runs live, "
                                              f"at most {concurrency}")
        if rate is not None:
            most, window = rate
            started = self.starts(conn, stage, now, window)
            if len(started) >= most:
                frees = started[len(started) - most] + timedelta(seconds=window)
                wait = max(0.0, (frees - now).total_seconds())
                return Refused("rate", f"stage {stage!r} is at its rate limit: {len(started)} runs started in the "
                                       f"last {window_text(window)}, at most {most}; the next may start in "
                                       f"{wait:.0f} s", retry_after=wait)
        return None

    def _started(self, conn: Connection, run_id: str, stage: str, now: datetime, key: tuple[str, str],
                 window: int) -> None:
        """Record a run's start for its stage's rate limit; drop starts older than the window."""
        conn.execute(delete(run_starts).where(run_starts.c.stage == stage,
                                              run_starts.c.started_at <= now - timedelta(seconds=window)))
        conn.execute(run_starts.insert().values(run_id=run_id, stage=stage, started_at=now, show_id=key[0],
                                                episode_id=key[1]))

    def refill_starts(self, conn: Connection, windows: Mapping[str, int], local: datetime) -> int:
        """After a rebuild (the table starts empty): the starts of the stages
        with a rate limit (``windows``: stage -> seconds) still in their windows,
        from the ``start`` events the files record (timed by the writers'
        clocks, not the database's); how many."""
        if not windows:
            return 0
        now = self.now(conn, local)
        since = now - timedelta(seconds=max(windows.values()))
        rows: dict[str, dict[str, Any]] = {}
        for show, ep, at, data in conn.execute(select(events.c.show_id, events.c.episode_id, events.c.at,
                                                      events.c.data)
                                               .where(events.c.kind == "start", events.c.at > since)):
            line = orjson.loads(data) if isinstance(data, (str, bytes)) else data
            stage = line.get("run_stage") or line.get("to_stage")
            run_id = line.get("run_id")
            window = windows.get(stage) if isinstance(stage, str) else None
            if window is None or not isinstance(run_id, str) or at <= now - timedelta(seconds=window):
                continue
            rows[run_id] = {"run_id": run_id, "stage": stage, "started_at": at, "show_id": show, "episode_id": ep}
        if rows:
            conn.execute(run_starts.insert(), list(rows.values()))
        return len(rows)

    def forget_start(self, run_id: str) -> None:
        """A claimed run that could not start does not count against its stage's rate."""
        try:
            with self._session(write=True) as conn:
                conn.execute(delete(run_starts).where(run_starts.c.run_id == run_id))
        except SQLAlchemyError as exc:
            raise self._failed("forget a run's start", exc) from exc

    def usage(self, stage: str, local: datetime, window: int | None) -> tuple[int, int | None]:
        """(live runs of ``stage``, runs started in the last ``window`` seconds or None), by the database's clock."""
        try:
            with self._session() as conn:
                now = self.now(conn, local)
                live = self.live_runs(conn, stage, now)
                started = len(self.starts(conn, stage, now, window)) if window is not None else None
        except SQLAlchemyError as exc:
            raise self._failed("count a stage's runs", exc) from exc
        return live, started

    def expired(self, local: datetime) -> list[tuple[str, str]]:
        """Episodes whose lease row ran out: their run stopped renewing it."""
        try:
            with self._session() as conn:
                now = self.now(conn, local)
                return [(s, e) for s, e in conn.execute(
                    select(leases.c.show_id, leases.c.episode_id).where(leases.c.expires_at <= now)
                    .order_by(leases.c.expires_at, leases.c.show_id, leases.c.episode_id))]
        except SQLAlchemyError as exc:
            raise self._failed("read the leases", exc) from exc

    def count(self) -> int:
        with self._session() as conn:
            return int(conn.execute(select(func.count()).select_from(leases)).scalar() or 0)


# --- across a rebuild -----------------------------------------------------------------------

LEASE_COLUMNS = ("show_id", "episode_id", "run_id", "owner", "stage", "lease_seconds", "expires_at")


RESTORE_BATCH = 400
"""Episodes looked up per query when a rebuild restores the leases its files record."""


def kept(conn: Connection) -> list[dict[str, Any]]:
    """Every lease row of the index ``conn`` reads (to carry into a rebuilt one)."""
    return [dict(zip(LEASE_COLUMNS, row)) for row in conn.execute(select(*(leases.c[c] for c in LEASE_COLUMNS)))]


def restore(conn: Connection, rows: Sequence[dict[str, Any]], local: datetime,
            among: Sequence[tuple[str, str]] | None = None) -> int:
    """In a freshly built index (``conn``, in its transaction): the lease
    ``rows`` of the index it replaces, then a row from the file for each
    episode whose file records a live lease and that has none. How many rows
    the files gave. ``among``: (show, episode) of every episode whose row has a lease,
    in the rows' order (a rebuild's fill saw them: only those are looked up, by key,
    not the whole table; None: every row is looked at)."""
    server = conn.dialect.name != "sqlite"
    insert = postgresql.insert if server else sqlite.insert
    if rows:
        conn.execute(insert(leases).on_conflict_do_nothing(), list(rows))
    now = LeaseTable.now_of(conn, server, local)
    query = (select(episodes.c.show_id, episodes.c.episode_id, episodes.c.stage, episodes.c.data)
             .select_from(episodes.outerjoin(leases, and_(leases.c.show_id == episodes.c.show_id,
                                                          leases.c.episode_id == episodes.c.episode_id)))
             .where(episodes.c.lease_expires_at > now, leases.c.show_id.is_(None)))
    found: list[Any]
    if among is None:
        found = list(conn.execute(query))
    else:  # by key, a batch at a time; in ``among``'s order (the rows' order, as a scan of the table gives them)
        place = {key: i for i, key in enumerate(among)}
        keys = list(place)
        found = []
        for start in range(0, len(keys), RESTORE_BATCH):
            batch = keys[start:start + RESTORE_BATCH]
            found.extend(conn.execute(query.where(tuple_(episodes.c.show_id, episodes.c.episode_id).in_(batch))))
        found.sort(key=lambda r: place[(r[0], r[1])])
    restored = []
    for show, ep, stage, data in found:
        lease = (json.loads(data) if isinstance(data, str) else data or {}).get("lease") or {}
        try:
            acquired = datetime.fromisoformat(lease["acquired_at"])
            expires = datetime.fromisoformat(lease["expires_at"])
            restored.append({"show_id": show, "episode_id": ep, "run_id": str(lease["run_id"]),
                             "owner": str(lease["owner"]), "stage": stage,
                             "lease_seconds": max(0.001, (expires - acquired).total_seconds()),
                             "expires_at": expires.astimezone(timezone.utc)})
        except (KeyError, TypeError, ValueError) as exc:  # the file's checks passed: not expected
            log.warning("statekit: the lease of %s/%s was not restored (%s)", show, ep, exc)
    if restored:
        conn.execute(insert(leases).on_conflict_do_nothing(), restored)
    return len(restored)
