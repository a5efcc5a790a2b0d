"""Leased stage runs and what happens when one fails.

``Store.run`` returns a ``Run``: entering it moves the episode into the
stage under a lease (owner, run id, expiry), the body saves checkpoints and
costs through it, and leaving it moves the episode on (success) or records
the failure and applies the failure policy. Every write of a run checks
that its lease is still its own and unexpired, so a worker that lost its
lease can never write again.

The decisions (what a failure does to an episode) are pure functions here;
the ``Store`` does the I/O.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import traceback
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import files as diskio
from .errors import (
    CorruptFileError,
    LeaseExpiredError,
    SchemaVersionError,
    StatekitError,
    ValidationError,
    context_of,
    error_text,
)
from .models import COST_HINT, Episode, ErrorRecord, add_cost, check_text, cost_sum
from .pipeline import Pipeline, approvals_after_move
from .taxonomy import ErrorKind, backoff_seconds, classify, explain, log_fields

if TYPE_CHECKING:
    from .store import Store

Change = Callable[[Episode, datetime], "tuple[Episode, dict[str, Any]] | None"]

MAX_MESSAGE = 2000
MAX_TRACEBACK = 4000
TRACEBACK_FRAMES = 8


def default_owner() -> str:
    """``host:pid``, so a person can find the worker that holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def short_traceback(exc: BaseException) -> str:
    """The last frames of the traceback, at most ``MAX_TRACEBACK`` characters."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES))
    return text if len(text) <= MAX_TRACEBACK else "...\n" + text[-MAX_TRACEBACK:]


def _one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _storable(text: str) -> str:
    """``text`` as a file can hold it: bytes that were not UTF-8 (lone
    surrogates, e.g. from a file name) become ``\\udcxx`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


# --- the failure policy (pure) ----------------------------------------------------


def plan_failure(
    p: Pipeline,
    m: Episode,
    stage: str,
    exc: BaseException,
    now: datetime,
    *,
    kind: ErrorKind | None = None,
    run_id: str | None = None,
    event_kind: str = "fail",
) -> tuple[Episode, dict[str, Any], dict[str, Any]]:
    """The episode after a run of ``stage`` failed with ``exc``, its event,
    and the error record (also what goes into ``errors.jsonl``).

    The episode moves to the failure stage with the error in its history.
    Then by the kind's policy: ``retry`` while attempts are left (due again
    after an exponential backoff with jitter; a dead worker's run at once),
    ``hold`` for a person (bad input, hardware), or ``give_up`` (permanent,
    or attempts used up), which the caller completes by moving the episode
    to the give-up stage (``plan_give_up``).
    """
    assert p.failure_stage is not None
    kind = kind or classify(exc, p.error_rules)
    used = m.attempts.get(stage, 0)
    allowed = p.attempts_allowed(stage)
    due: datetime | None = None
    hold: str | None = None
    text = _storable(error_text(exc)) or type(exc).__name__  # an exception's text need not be valid UTF-8
    if kind.policy == "retry" and used < allowed:
        action = "retry"
        delay = 0.0 if kind is ErrorKind.INTERRUPTED else backoff_seconds(
            used, p.retry.initial, p.retry.maximum, p.retry.jitter)
        asked = getattr(exc, "retry_after", None)  # a service that says when to come back
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and 0 < asked < 86400 * 7:
            delay = max(delay, float(asked))
        due = now + timedelta(seconds=delay)
        summary = explain(exc, kind, "retry" if delay else "retry_now")
    elif kind.policy == "person":
        action = "hold"
        summary = explain(exc, kind, "hold")
    else:
        action = "give_up"
        why = "a permanent failure" if kind.policy == "give_up" else f"{used} of {allowed} attempts used"
        summary = explain(exc, kind, "give_up" if p.give_up_stage else "give_up_hold", why=why,
                          stage=p.give_up_stage or p.failure_stage)
        hold = f"giving up on {stage} ({why}): {_one_line(text, 300)}"
    summary = _storable(summary).replace("SHOW/EP", m.key)
    if action == "hold":
        hold = summary
    record = ErrorRecord(
        at=now, stage=stage, kind=kind.value, message=_one_line(text) or type(exc).__name__,
        traceback=_storable(short_traceback(exc)) if exc.__traceback__ is not None else None,
        type=_type_name(exc), attempt=used, action=action, run_id=run_id,
    )
    failure = p.failure_stage
    new = m.model_copy(update={
        "stage": failure, "previous_stage": stage, "version": m.version + 1, "updated_at": now,
        "stage_entered_at": now, "message": summary,
        "attempts": {**m.attempts, failure: m.attempts.get(failure, 0) + 1},
        "approvals": approvals_after_move(p, failure, m.approvals),
        "error_history": [*m.error_history, record], "lease": None, "due_at": due, "hold": hold,
        "stage_done": False,
    })
    event = {"kind": event_kind, "from_stage": stage, "to_stage": failure, "message": summary,
             "error_kind": kind.value, "action": action, "attempt": used, "run_id": run_id,
             "due_at": due.isoformat() if due is not None else None}
    line = {**record.model_dump(mode="json", exclude_none=True), "show_id": m.show_id,
            "episode_id": m.episode_id, "due_at": event["due_at"]}
    line.pop("traceback", None)
    return new, event, {k: v for k, v in line.items() if v is not None}


def giving_up(p: Pipeline, m: Episode) -> bool:
    """True for an episode a failure sent to give up that has not gone there yet
    (its second write did not happen: the process stopped in between)."""
    return (m.stage == p.failure_stage and m.hold is not None and bool(m.error_history)
            and m.error_history[-1].action == "give_up" and p.give_up_stage is not None)


def plan_give_up(p: Pipeline, m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
    """The second half of giving up: failure stage -> give-up stage, with the reason."""
    assert p.give_up_stage is not None
    target = p.give_up_stage
    reason = m.hold or "gave up"
    new = m.model_copy(update={
        "stage": target, "previous_stage": m.stage, "version": m.version + 1, "updated_at": now,
        "stage_entered_at": now, "message": reason,
        "attempts": {**m.attempts, target: m.attempts.get(target, 0) + 1},
        "approvals": approvals_after_move(p, target, m.approvals),
        "lease": None, "due_at": None, "hold": None, "stage_done": False,
    })
    return new, {"kind": "give_up", "from_stage": m.stage, "to_stage": target, "message": reason}


def interrupted(m: Episode) -> InterruptedRun:
    assert m.lease is not None
    lease = m.lease
    return InterruptedRun(
        f"the lease of {lease.owner} (run {lease.run_id}) expired at {lease.expires_at.isoformat()} "
        "without a heartbeat: the worker stopped or lost contact")


class InterruptedRun(Exception):
    """Stands for a run whose worker went away (what ``recover`` records)."""


# --- the run handle ----------------------------------------------------------------


class Run:
    """One leased run of a stage. Use as a context manager (``Store.run``).

    Inside the ``with`` block: ``episode`` (as of the run's last write),
    ``resume`` (checkpoint data an earlier attempt saved for this stage),
    ``checkpoint()``, ``cost()``, ``heartbeat()``; set ``message`` to say
    what the run did. Each of those writes renews the lease.

    After the block: ``outcome`` is ``succeeded`` or ``failed``; for a
    failure, ``error`` and ``kind``. With ``reraise=False`` the block's
    exception is recorded and not raised again.
    """

    def __init__(self, store: Store, show: str, ep: str, stage: str, *, owner: str, lease_seconds: float,
                 reraise: bool, verify_assets: tuple[str, ...] = ()) -> None:
        self.store = store
        self.show_id = show
        self.episode_id = ep
        self.stage = stage
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.reraise = reraise
        self.run_id = new_run_id()
        self.episode: Episode | None = None
        self._message: str | None = None
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.kind: ErrorKind | None = None
        self.verify_assets = verify_assets
        self._started_at: datetime | None = None
        self._temp_dir: str | None = None

    @property
    def message(self) -> str | None:
        """What the run did, recorded when it finishes."""
        return self._message

    @message.setter
    def message(self, value: str | None) -> None:
        # refused where it is set (a clear failure of the body), not when the finished run is written
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"run.message must be text, got {type(value).__name__}",
                                  hint="set a str or None")
        check_text(value, "run.message")
        self._message = value

    def __repr__(self) -> str:
        return f"Run({self.show_id}/{self.episode_id} {self.stage!r}, owner={self.owner!r}, run_id={self.run_id})"

    # --- the lease ---------------------------------------------------------------

    def _expires(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_seconds)

    def check(self, m: Episode, now: datetime) -> None:
        """Refuse a write unless this run still holds an unexpired lease."""
        lease = m.lease
        common: dict[str, Any] = {"expected": self.episode.version if self.episode else m.version,
                                  "actual": m.version, "show_id": m.show_id, "episode_id": m.episode_id,
                                  "stage": self.stage, "owner": self.owner}
        if lease is None or lease.run_id != self.run_id:
            holder = f"now held by {lease.owner} (run {lease.run_id})" if lease is not None else "released"
            raise LeaseExpiredError(
                f"run {self.run_id} of {m.key} {self.stage!r} lost its lease ({holder}); the write was refused",
                **common)
        if now >= lease.expires_at:
            raise LeaseExpiredError(
                f"run {self.run_id} of {m.key} {self.stage!r}: the lease expired at {lease.expires_at.isoformat()}; "
                "the write was refused", **common)
        if m.stage != self.stage:
            raise LeaseExpiredError(
                f"{m.key} is at stage {m.stage!r}, no longer {self.stage!r}; the run's write was refused", **common)

    @property
    def time_left(self) -> float:
        """Seconds until the lease expires (by the store's clock)."""
        if self.episode is None or self.episode.lease is None:
            return 0.0
        return (self.episode.lease.expires_at - self.store.clock()).total_seconds()

    # --- what the body can do ----------------------------------------------------------

    @property
    def resume(self) -> dict[str, Any] | None:
        """The checkpoint an earlier attempt saved for this stage, or None.
        A damaged checkpoint counts as none (the stage starts afresh; it is
        logged, ``verify`` reports it and ``repair`` moves it aside)."""
        try:
            return self.store.load_checkpoint(self.show_id, self.episode_id, self.stage)
        except (CorruptFileError, SchemaVersionError) as exc:
            logging.getLogger("statekit").warning(
                "statekit: ignoring the damaged checkpoint of %s/%s %s: %s", self.show_id, self.episode_id,
                self.stage, exc.one_line(), extra=log_fields(exc.context))
            return None

    def heartbeat(self) -> Episode:
        """Renew the lease (one ``heartbeat`` event). Call it more often than
        ``lease_seconds`` during long work."""
        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            self.check(m, now)
            new = self._renewed(m, now)
            assert new.lease is not None
            return new, {"kind": "heartbeat", "run_id": self.run_id,
                         "lease_expires_at": new.lease.expires_at.isoformat()}

        return self._write(change)

    def cost(self, amount: float, *, note: str | None = None) -> Episode:
        """Record money spent by this stage now (durable at once, one ``cost`` event)."""
        from .store import _check_cost

        value = _check_cost(amount)
        if value is None:
            raise ValidationError("cost needs an amount", field="cost", hint=COST_HINT)
        if note is not None and not isinstance(note, str):
            raise ValidationError(f"note must be text, got {type(note).__name__}",
                                  hint="pass a str or None; nothing was changed")
        check_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            self.check(m, now)
            new = self._renewed(m, now, cost=value)
            return new, {"kind": "cost", "cost": value, "message": note, "run_id": self.run_id}

        return self._write(change)

    def checkpoint(self, data: Mapping[str, Any], *, cost: float | None = None) -> Episode:
        """Save this stage's intermediate results (``checkpoints/<stage>.json``),
        and optionally what they cost, in one write; renews the lease."""
        from .store import _check_cost

        value = _check_cost(cost)

        def extra(m: Episode, now: datetime) -> dict[str, Any]:
            self.check(m, now)
            return self._renewed(m, now, cost=value, fields_only=True)

        episode = self.store._save_checkpoint(self.show_id, self.episode_id, self.stage, data, extra=extra,
                                              event_extra={"run_id": self.run_id, "cost": value})
        self.episode = episode
        return episode

    def add_asset(self, source: Any, kind: str = "audio", name: str | None = None, *,
                  media_type: str | None = None, label: str | None = None) -> Episode:
        """``Store.add_asset`` as part of this run (lease checked and renewed)."""
        def extra(m: Episode, now: datetime) -> dict[str, Any]:
            self.check(m, now)
            return self._renewed(m, now, fields_only=True)

        episode = self.store.add_asset(self.show_id, self.episode_id, source, kind, name, media_type=media_type,
                                       label=label, _extra=extra, _event_extra={"run_id": self.run_id})
        self.episode = episode
        return episode

    def asset(self, name: str, *, verify: bool = True) -> str:
        """The path of asset ``name``, hashed first unless ``verify=False``
        (``CorruptFileError`` naming the path if its content changed)."""
        if verify:
            return self.store.verify_asset(self.show_id, self.episode_id, name)
        return self.store.asset_path(self.show_id, self.episode_id, name)

    def temp_path(self, suffix: str = "") -> str:
        """A fresh path for an intermediate file of this run, under
        ``.statekit/tmp/runs/<run_id>/``. Every such file is removed when the
        run ends, however it ends; after ``kill -9``, ``statekit gc`` does it."""
        if not isinstance(suffix, str) or "/" in suffix or len(suffix) > 32:
            raise ValidationError(f"suffix must be a short file name ending such as '.wav', got {suffix!r}",
                                  hint="at most 32 characters, no '/'")
        parts = (".statekit", "tmp", "runs", self.run_id)
        # made in the folder walked from the root (never through a symlink); the caller writes it by its path
        with self.store._open(parts, create=True, durable=False) as folder:
            fd, path = diskio.mkstemp_at(folder, "/".join((self.store.root, *parts)), "tmp", suffix)
        os.close(fd)
        self._temp_dir = os.path.dirname(path)
        return path

    def _remove_temp(self) -> None:
        """Remove the run's temp folder, reached from the root (never through a symlink)."""
        if self._temp_dir is not None:
            self._temp_dir = None
            try:
                with self.store._open_existing((".statekit", "tmp", "runs")) as runs:
                    if runs is not None:
                        shutil.rmtree(self.run_id, ignore_errors=True, dir_fd=runs)
            except StatekitError as exc:
                logging.getLogger("statekit").warning(
                    "statekit: the temp files of run %s were not removed (%s); 'statekit gc' removes them later",
                    self.run_id, exc.one_line())

    def _verify(self, when: str) -> None:
        for name in self.verify_assets:
            try:
                self.store.verify_asset(self.show_id, self.episode_id, name)
            except StatekitError as exc:
                exc.message = f"{exc.message} ({when} stage {self.stage!r})"
                raise

    def _renewed(self, m: Episode, now: datetime, *, cost: float | None = None, fields_only: bool = False) -> Any:
        assert m.lease is not None
        update: dict[str, Any] = {"lease": m.lease.model_copy(update={"expires_at": self._expires(now)})}
        if cost is not None:
            costs = add_cost(m.costs, self.stage, cost, m.key)
            update.update(costs=costs, cost_total=cost_sum(costs))
        if fields_only:
            return update
        return m.model_copy(update={**update, "version": m.version + 1, "updated_at": now})

    def _write(self, change: Change) -> Episode:
        episode = self.store._write(self.show_id, self.episode_id, change)
        self.episode = episode
        return episode

    # --- start and finish --------------------------------------------------------------

    def __enter__(self) -> Run:
        self.episode = self.store._start_run(self)
        self._started_at = self.store.clock()
        if self.verify_assets:
            try:  # the input is checked before any work is done on it
                self._verify("before")
            except StatekitError as exc:  # recorded as the stage's failure, and raised (the body cannot run)
                try:
                    self._fail(exc)
                finally:
                    self._remove_temp()
                raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is None and self.verify_assets:
                try:  # and again after the work, before the stage counts as done
                    self._verify("after")
                except StatekitError as bad:
                    if self._fail(bad):
                        return False
                    raise
            if exc is None:
                self.episode = self.store._finish_run(self)
                self.outcome = "succeeded"
                return False
            return self._fail(exc)
        finally:
            self._remove_temp()

    def _fail(self, exc: BaseException) -> bool:
        """Record ``exc`` as this run's failure; True if it is not to be raised."""
        self.outcome = "failed"
        self.error = exc
        if isinstance(exc, LeaseExpiredError):
            return False  # the episode is not ours any more: nothing to record, the error says why
        kind = ErrorKind.INTERRUPTED if not isinstance(exc, Exception) else None
        self.episode, self.kind = self.store._fail_run(self, exc, kind)
        return not self.reraise and isinstance(exc, Exception)

    def elapsed(self) -> float:
        return 0.0 if self._started_at is None else (self.store.clock() - self._started_at).total_seconds()


def log_failure(logger: Any, line: Mapping[str, Any], exc: BaseException) -> None:
    """The failure as one structured log record (context as fields)."""
    fields = {**context_of(exc), **line}
    level = 40 if line.get("action") != "retry" else 30  # ERROR, WARNING
    logger.log(level, "%s/%s %s failed (%s, %s): %s", line.get("show_id"), line.get("episode_id"),
               line.get("stage"), line.get("kind"), line.get("action"), line.get("message"),
               extra=log_fields(fields))
