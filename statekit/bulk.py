"""Changing many episodes at once: ``retry`` a stage's failures, ``requeue`` what a query selects,
and ``migrate`` the episodes a change of the pipeline graph stranded.

The index picks the episodes (a read-only query); each one is then changed
through the write path on its own (its lock, its committed state, one event
carrying the operator's note), so the decision is taken again on what the file
holds, not on what the index said a moment ago: an episode a worker took
meanwhile, or that is already ready, is listed as skipped with the reason, never
changed twice. ``dry_run`` lists what would change and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import QueryError, StatekitError, ValidationError
from .graphs import graph_hash, stranding
from .ids import check_id
from .index.tables import episodes, events
from .models import Episode, check_optional_text, check_text
from .pipeline import Pipeline, approvals_after_move, gate_is_approved
from .queries import models
from .taxonomy import ErrorKind
from .writes import Writer

Progress = Callable[[int, int], None]


class Skip(Exception):
    """This episode is left as it is (the reason says why)."""


@dataclass
class BulkReport:
    """What a bulk change did (or, in a dry run, would do): ``changed`` and ``skipped``
    hold one entry per episode (``episode``, ``from``, ``to``, ``action`` or ``reason``)."""

    dry_run: bool = False
    selected: int = 0
    changed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "selected": self.selected, "changed": self.changed, "skipped": self.skipped}


Plan = Callable[[Episode, datetime], "tuple[Episode, dict[str, Any]]"]
"""``plan(current, now)``: the new episode and its event, or ``Skip``."""


def check_where(clause: str) -> str:
    """``clause`` if it can only be one SQL expression (what goes after ``WHERE``):
    no ``;``, no comment, parentheses that never close more than they opened,
    outside quoted text and names. What the expression means is the database's
    to judge (on a read-only connection)."""
    if not isinstance(clause, str) or not clause.strip():
        raise QueryError("the --query WHERE clause is empty", reason="empty",
                         hint='give an expression on table episodes, e.g. --query "stage = \'failed\'"')
    depth, i, n = 0, 0, len(clause)
    while i < n:
        c = clause[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            end = clause.find(close, i + 1)
            while end != -1 and close != "]" and end + 1 < n and clause[end + 1] == close:  # '' inside '...'
                end = clause.find(close, end + 2)
            if end == -1:
                raise _not_one(f"a quote ({c}) is not closed")
            i = end + 1
            continue
        if c == ";":
            raise _not_one("it holds ';' (one expression, not statements)")
        if clause.startswith("--", i) or clause.startswith("/*", i):
            raise _not_one("it holds a comment")
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            raise _not_one("a ')' closes more than was opened")
        i += 1
    if depth:
        raise _not_one("a '(' is not closed")
    return clause


def _not_one(why: str) -> QueryError:
    return QueryError(f"the --query WHERE clause is not a single SQL expression: {why}", reason="syntax",
                      hint='give one condition on table episodes, e.g. --query "stage = \'failed\' AND '
                           'error_count > 2"; nothing was changed')


class Bulk:
    """Bulk changes of one store, each episode through its ``writer``."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    # --- selecting ----------------------------------------------------------------

    def where(self, clause: str, timeout: float = 30.0) -> list[tuple[str, str]]:
        """``(show, episode)`` of the indexed episodes ``clause`` selects (read-only SQL)."""
        check_where(clause)
        _columns, rows = self.writer.index.sql(
            f"SELECT show_id, episode_id FROM episodes WHERE ({clause}) ORDER BY show_id, episode_id", timeout)
        return [(str(s), str(e)) for s, e in rows]

    def positions(self, show: str | None = None, *, suspects_only: bool = False,
                  cheap: bool = False) -> list[tuple[Any, ...]]:
        """``(show, episode, stage, previous_stage, stage_done, graph)`` of the indexed
        episodes, ``graph`` the one their last event names (what they last moved under).
        ``suspects_only``: only those in a stage the graph in force lacks or whose last
        event names another graph (the rest cannot be stranded). ``cheap``: only those
        in a stage it lacks or waiting to retry one (indexed columns: no join, no JSON),
        one row per show and position with ``episode`` being how many, ``graph`` None."""
        from sqlalchemy import and_, func, literal, or_, select

        p = self.writer.pipeline
        stages = list(p.stages)
        graph = literal(None) if cheap else events.c.data["graph"].as_string()
        done = literal(False) if cheap else episodes.c.data["stage_done"].as_boolean()
        columns = [episodes.c.show_id, episodes.c.stage, episodes.c.previous_stage]
        stmt = select(*columns[:1], func.count() if cheap else episodes.c.episode_id, *columns[1:], done, graph)
        if not cheap:
            stmt = stmt.select_from(episodes.outerjoin(events, and_(
                events.c.show_id == episodes.c.show_id, events.c.episode_id == episodes.c.episode_id,
                events.c.version == episodes.c.version)))
        if show is not None:
            stmt = stmt.where(episodes.c.show_id == show)
        if cheap:
            retrying = and_(episodes.c.stage == (p.failure_stage or ""), episodes.c.previous_stage.not_in(stages))
            stmt = stmt.where(or_(episodes.c.stage.not_in(stages), retrying)).group_by(*columns)
        else:
            if suspects_only:
                stmt = stmt.where(or_(episodes.c.stage.not_in(stages), func.coalesce(graph, "") != graph_hash(p)))
            stmt = stmt.order_by(episodes.c.show_id, episodes.c.episode_id)
        with self.writer.index.reading() as conn:
            return [tuple(r) for r in conn.execute(stmt)]

    # --- applying -----------------------------------------------------------------

    def apply(self, keys: Iterable[tuple[str, str]], plan: Plan, *, dry_run: bool,
              progress: Progress | None = None) -> BulkReport:
        """``plan`` each episode: in a dry run on its committed state (nothing written),
        else under its lock through the write path (one event each)."""
        keys = list(keys)
        report = BulkReport(dry_run=dry_run, selected=len(keys))
        for done, (show, ep) in enumerate(keys):
            if progress is not None:
                progress(done, len(keys))
            entry: dict[str, Any] = {"episode": f"{show}/{ep}"}

            def change(m: Episode, now: datetime, entry: dict[str, Any] = entry) -> tuple[Episode, dict[str, Any]]:
                new, event = plan(m, now)
                entry.update({"from": m.stage, "to": new.stage, "action": event.get("released") or event["kind"],
                              "version": new.version})
                return new, event

            try:
                if dry_run:
                    change(self.writer.get(show, ep), self.writer.clock())
                else:
                    self.writer.write(show, ep, change)
                report.changed.append(entry)
            except Skip as why:
                report.skipped.append({"episode": entry["episode"], "reason": str(why)})
            except StatekitError as exc:
                report.skipped.append({"episode": entry["episode"], "reason": exc.one_line()})
        if progress is not None:
            progress(len(keys), len(keys))
        return report

    def _not_running(self, m: Episode, now: datetime) -> None:
        if m.lease is not None and self.writer.lease_live(m, now):
            raise Skip(f"being run ({m.stage}) by {m.lease.owner}: left to its worker")

    # --- retry --------------------------------------------------------------------------

    def retry(self, stage: str, *, kind: str | None = None, show: str | None = None, since: datetime | None = None,
              note: str | None = None, by: str | None = None, dry_run: bool = False,
              progress: Progress | None = None) -> BulkReport:
        """Every failed, held or given-up episode of ``stage`` back to ready (see ``retry_action``)."""
        writer, p = self.writer, self.writer.pipeline
        writer.check_stage(stage)
        if show is not None:
            check_id(show, "show id")
        if kind is not None and kind not in {k.value for k in ErrorKind}:
            raise ValidationError(f"unknown error kind {kind!r}", field="kind",
                                  hint="kinds: " + ", ".join(k.value for k in ErrorKind) + "; nothing was changed")
        if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise ValidationError("since must be a timezone-aware time", hint="e.g. --since 2026-01-01T00:00Z")
        _check_note(note, by)
        now = writer.clock()
        found: dict[tuple[str, str], None] = {}
        for where in dict.fromkeys(s for s in (stage, p.failure_stage, p.give_up_stage) if s is not None):
            for m in models(writer.index.episode_data(show, where, decoded=False)):
                if retry_action(p, m, stage, now) is not None and _matches(m, kind, since):
                    found[(m.show_id, m.episode_id)] = None

        def plan(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            self._not_running(m, now)
            action = retry_action(p, m, stage, now)
            if action is None or not _matches(m, kind, since):
                raise Skip(f"not waiting for a retry of {stage!r} any more (stage {m.stage!r})")
            return plan_retry(p, m, stage, action, now, note=note, by=by)

        return self.apply(found, plan, dry_run=dry_run, progress=progress)

    # --- requeue ------------------------------------------------------------------------

    def requeue(self, clause: str, *, to: str | None = None, note: str | None = None, by: str | None = None,
                dry_run: bool = False, progress: Progress | None = None) -> BulkReport:
        """The episodes ``clause`` selects: moved to ``to`` (an operator's move, not judged
        by the graph; a gate still needs its approval), or without ``to`` released for
        their next attempt where they are (hold and backoff cleared)."""
        writer, p = self.writer, self.writer.pipeline
        if to is not None:
            writer.check_stage(to)
        _check_note(note, by)
        keys = self.where(clause)

        def plan(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            self._not_running(m, now)
            return plan_requeue(p, m, to, now, note=note, by=by)

        return self.apply(keys, plan, dry_run=dry_run, progress=progress)

    # --- a changed graph -------------------------------------------------------------------

    def stranded(self, proposed: Pipeline | None = None, show: str | None = None, *,
                 counts: bool = False) -> list[dict[str, Any]]:
        """The episodes a graph strands (``graphs.stranding``): ``proposed`` (not saved yet)
        judged against the graph in force; without it, the graph in force judged against
        the graph each episode last moved under. From the index. ``counts``: one entry
        per show and stage with ``n`` episodes instead, of those in a stage the graph lacks
        or waiting to retry one (what ``statekit status`` shows: indexed columns only, fast
        on a large store; ``pipeline check`` and ``verify`` also find moves that vanished)."""
        writer = self.writer
        if show is not None:
            check_id(show, "show id")
        new = proposed or writer.pipeline
        out: list[dict[str, Any]] = []
        per: dict[tuple[str, str], int] = {}
        for s, e, stage, previous, done, graph in self.positions(show, suspects_only=proposed is None,
                                                                  cheap=counts):
            old = writer.pipeline if proposed is not None else writer.graphs.graph(graph)
            why = stranding(new, stage, previous, done=bool(done), old=old)
            if why is None:
                continue
            if counts:
                per[(s, stage)] = per.get((s, stage), 0) + int(e)
            else:
                out.append({"episode": f"{s}/{e}", "stage": stage, "previous_stage": previous, "reason": why})
        if counts:
            return [{"show_id": s, "stage": stage, "n": n} for (s, stage), n in sorted(per.items())]
        return out

    def migrate(self, mapping: Mapping[str, str], *, note: str | None = None, by: str | None = None,
                dry_run: bool = False, progress: Progress | None = None) -> BulkReport:
        """Move stranded episodes by ``mapping`` (old stage -> stage of the graph in force):
        an episode in an old stage goes to its new one; one waiting to retry an old stage
        waits for the new one. One ``pipeline_migrate`` event each. Stranded episodes the
        map does not cover are listed as skipped."""
        writer, p = self.writer, self.writer.pipeline
        if not mapping:
            raise ValidationError("give at least one --map OLD=NEW", hint="e.g. --map converting=transcoding")
        for old, new in mapping.items():
            check_id(old, "old stage")
            writer.check_stage(new)
            if old in p.stages:
                raise ValidationError(f"--map {old}={new}: stage {old!r} is still in the pipeline",
                                      hint="map only stages the pipeline no longer has (see "
                                           "'statekit pipeline check'); move others with 'statekit requeue'")
        _check_note(note, by)
        writer.graphs.forget()
        stuck = self.stranded()
        keys = [tuple(s["episode"].split("/", 1)) for s in stuck]

        def plan(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            self._not_running(m, now)
            return plan_migrate(p, m, mapping, now, note=note, by=by)

        return self.apply(keys, plan, dry_run=dry_run, progress=progress)  # type: ignore[arg-type]


# --- the decisions (pure) ----------------------------------------------------------------


def _check_note(note: str | None, by: str | None) -> None:
    check_optional_text(note, "note")
    if by is not None:
        if not isinstance(by, str) or not by.strip():
            raise ValidationError("by must be the name of the person making the change",
                                  hint="pass by='their name', or leave it out; nothing was changed")
        check_text(by, "by")


def _matches(m: Episode, kind: str | None, since: datetime | None) -> bool:
    last = m.error_history[-1] if m.error_history else None
    if kind is not None and (last is None or last.kind != kind):
        return False
    return since is None or (last.at if last is not None else m.updated_at) >= since


def retry_action(p: Pipeline, m: Episode, stage: str, now: datetime) -> str | None:
    """What a retry of ``stage`` would release in ``m``: ``hold`` (held for a person),
    ``backoff`` (waiting out a retry delay), ``give_up`` (a run of ``stage`` gave up),
    or None (not a failure of ``stage``, or ready already)."""
    if m.stage == p.failure_stage and m.previous_stage == stage or m.stage == stage and m.hold is not None:
        if m.hold is not None:
            return "hold"
        if m.due_at is not None and m.due_at > now:
            return "backoff"
        return None
    last = m.error_history[-1] if m.error_history else None
    if (m.stage == p.give_up_stage and p.failure_stage is not None and last is not None
            and last.action == "give_up" and last.stage == stage):
        return "give_up"
    return None


def plan_retry(p: Pipeline, m: Episode, stage: str, action: str, now: datetime, *, note: str | None,
               by: str | None) -> tuple[Episode, dict[str, Any]]:
    """Released: hold and backoff cleared. A give-up goes back to the failure stage,
    waiting to retry ``stage`` with its attempts there counted afresh."""
    update: dict[str, Any] = {"hold": None, "due_at": None, "version": m.version + 1, "updated_at": now}
    event: dict[str, Any] = {"kind": "retry", "message": note, "by": by, "released": action, "bulk": True}
    if action == "give_up":
        assert p.failure_stage is not None
        failure = p.failure_stage
        update.update(stage=failure, previous_stage=stage, stage_entered_at=now, stage_done=False,
                      message=note or f"retry of {stage} after a give-up",
                      attempts={**m.attempts, failure: m.attempts.get(failure, 0) + 1, stage: 0},
                      approvals=approvals_after_move(p, failure, m.approvals))
        event.update(from_stage=m.stage, to_stage=failure, attempts_reset={stage: m.attempts.get(stage, 0)})
    return m.model_copy(update=update), event


def plan_requeue(p: Pipeline, m: Episode, to: str | None, now: datetime, *, note: str | None,
                 by: str | None) -> tuple[Episode, dict[str, Any]]:
    """To ``to`` (hold, backoff and a done mark cleared), or released where it is."""
    moved = to is not None and to != m.stage
    if not moved and m.hold is None and (m.due_at is None or m.due_at <= now) and not (to and m.stage_done):
        raise Skip(f"already ready at {m.stage!r}: nothing to requeue")
    update: dict[str, Any] = {"hold": None, "due_at": None, "version": m.version + 1, "updated_at": now}
    if to is not None:
        update["stage_done"] = False
    if moved:
        assert to is not None
        refusal = gate_is_approved(p, m.stage, to, m.approvals)
        if refusal is not None:
            raise Skip(refusal.message)
        update.update(stage=to, previous_stage=m.stage, stage_entered_at=now, message=note,
                      attempts={**m.attempts, to: m.attempts.get(to, 0) + 1},
                      approvals=approvals_after_move(p, to, m.approvals))
    return m.model_copy(update=update), {"kind": "requeue", "from_stage": m.stage if moved else None,
                                         "to_stage": to if moved else None, "message": note, "by": by}


def plan_migrate(p: Pipeline, m: Episode, mapping: Mapping[str, str], now: datetime, *, note: str | None,
                 by: str | None) -> tuple[Episode, dict[str, Any]]:
    """``m`` with its old stage (or the old stage it waits to retry) mapped to the new one."""
    update: dict[str, Any] = {"version": m.version + 1, "updated_at": now}
    if m.stage in mapping:
        to = mapping[m.stage]
        refusal = gate_is_approved(p, m.stage, to, m.approvals)
        if refusal is not None:
            raise Skip(refusal.message)
        update.update(stage=to, previous_stage=m.stage, stage_entered_at=now, stage_done=False,
                      attempts={**m.attempts, to: m.attempts.get(to, 0) + 1},
                      approvals=approvals_after_move(p, to, m.approvals))
    elif m.previous_stage in mapping:
        update["previous_stage"] = mapping[m.previous_stage]
    else:
        raise Skip(f"stranded in {m.stage!r} (from {m.previous_stage!r}); --map does not name either")
    new = m.model_copy(update=update)
    why = stranding(p, new.stage, new.previous_stage, done=new.stage_done)
    if why is not None:
        raise Skip(f"would still be stranded after the map: {why}")
    used = {k: v for k, v in mapping.items() if k in (m.stage, m.previous_stage)}
    return new, {"kind": "pipeline_migrate", "from_stage": m.stage if new.stage != m.stage else None,
                 "to_stage": new.stage if new.stage != m.stage else None,
                 "message": note or "pipeline changed: " + ", ".join(f"{a} -> {b}" for a, b in used.items()),
                 "map": used, "by": by}
