"""Leased stage runs: ``Store.run`` returns a ``Run``.

Entering a run moves the episode into the stage under a lease (owner, run
id, expiry), the body saves checkpoints and costs through it, and leaving it
moves the episode on (success) or records the failure and applies the
failure policy (``failures``). Every write of a run checks that its lease is
still its own and unexpired, so a worker that lost its lease can never write
again. ``Runs`` holds the writes a run makes (start, finish, fail); ``Run``
is the handle the worker's code holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from . import files as diskio
from .assets import Assets
from .checkpoints import Checkpoints
from .controls import Controls
from .episodes import check_cost
from .errors import (
    ApprovalRequiredError,
    CorruptFileError,
    EpisodeNotFoundError,
    IndexUnavailableError,
    InvalidTransitionError,
    LeaseExpiredError,
    NotReadyError,
    SchemaVersionError,
    ShowNotFoundError,
    StatekitError,
    ValidationError,
)
from .failures import default_owner, new_run_id, plan_failure
from .ids import check_id
from .layout import RUN_TEMP
from .models import COST_HINT, ClaimRefused, Episode, Lease, add_cost, check_optional_text, check_text, cost_sum
from .pipeline import approvals_after_move, refuse_move
from .recovery import LeaseRanOut, Recovery
from .taxonomy import ErrorKind, log_fields
from .writes import Change, Writer

log = logging.getLogger("statekit")

CLAIM_LEASE_S = 20.0
"""A run's lease unless told otherwise (or the pipeline's, if shorter):
renewed in the background every third of it, so a worker killed mid-run
frees its episode within this many seconds (a run made with ``renew=False``
keeps the pipeline's, renewed by its writes only)."""

RENEW_MIN_S = 0.05
"""The shortest time between two renewals of a lease."""


class Runs:
    """The writes of leased runs, over the store's ``writer``; ``recovery``
    records a stopped worker's run before a new one starts."""

    def __init__(self, writer: Writer, checkpoints: Checkpoints, assets: Assets, recovery: Recovery,
                 controls: Controls | None = None) -> None:
        self.writer = writer
        self.checkpoints = checkpoints
        self.assets = assets
        self.recovery = recovery
        self.controls = controls

    def checked(self, stage: str, owner: str | None, lease_seconds: float | None,
                default_lease: float | None = None) -> tuple[str, float]:
        """The stage checked; the owner and lease length to use."""
        writer = self.writer
        pipeline = writer.pipeline
        writer.check_stage(stage)
        if stage not in pipeline.runs:
            raise ValidationError(
                f"stage {stage!r} is not run by workers in pipeline {pipeline.name!r}",
                hint="run stages: " + (", ".join(pipeline.runs) or "none (the pipeline declares no runs)"),
            )
        if owner is None:
            owner = default_owner()
        if not isinstance(owner, str) or not owner.strip() or len(owner) > 200:
            raise ValidationError(f"owner must be 1-200 characters of text, got {owner!r}",
                                  hint="name the worker, e.g. 'host:pid', or leave it out; nothing was changed")
        check_text(owner, "owner")
        if lease_seconds is None:
            lease_seconds = pipeline.retry.lease_seconds
            if default_lease is not None:
                lease_seconds = min(lease_seconds, default_lease)
        if (isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float))
                or not 0 < lease_seconds <= 7 * 86400):
            raise ValidationError(f"lease_seconds must be a number of seconds in (0, 604800], got {lease_seconds!r}")
        return owner.strip(), float(lease_seconds)

    def run(self, show: str, ep: str, stage: str, *, owner: str | None = None, lease_seconds: float | None = None,
            reraise: bool = True, verify_assets: tuple[str, ...] | list[str] = (), renew: bool = True) -> Run:
        """A leased run of ``stage`` (see ``Store.run``): arguments checked, nothing written yet."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        owner, seconds = self.checked(stage, owner, lease_seconds, default_lease=CLAIM_LEASE_S if renew else None)
        if isinstance(verify_assets, str) or not isinstance(verify_assets, (tuple, list)):
            raise ValidationError(f"verify_assets must be a list of asset names, got {verify_assets!r}")
        for name in verify_assets:
            check_id(name, "asset name")
        return Run(self, show, ep, stage, owner=owner, lease_seconds=seconds, reraise=reraise,
                   verify_assets=tuple(verify_assets), renew=renew)

    def claim(self, stage: str, *, owner: str | None = None, lease_seconds: float | None = None,
              show: str | None = None, reraise: bool = True) -> Run | None:
        """Lease the episode ready for ``stage`` with the highest priority,
        then the longest-waiting, and start its run (see ``Store.claim``);
        None when nothing is ready, or the stage is paused or at a limit."""
        claimed = self.try_claim(stage, owner=owner, lease_seconds=lease_seconds, show=show, reraise=reraise)
        return claimed if isinstance(claimed, Run) else None

    def try_claim(self, stage: str, *, owner: str | None = None, lease_seconds: float | None = None,
                  show: str | None = None, reraise: bool = True) -> Run | ClaimRefused | None:
        """``claim``, saying why nothing was handed out when the stage is paused
        (``controls``) or at its concurrency or rate limit (``limits:``): a ``ClaimRefused``."""
        if show is not None:
            check_id(show, "show id")
        owner, seconds = self.checked(stage, owner, lease_seconds, default_lease=CLAIM_LEASE_S)
        skip_shows: list[str] = []
        if self.controls is not None:
            refused, skip_shows = self.controls.refusal(stage, show)
            if refused is not None:
                return refused
        limit = self.writer.config.limits.get(stage)
        concurrency = limit.concurrency if limit is not None else None
        rate = limit.window if limit is not None else None
        leases = self.writer.index.leases
        skipped: list[tuple[str, str]] = []
        while True:
            run_id = new_run_id()
            picked = leases.claim(stage, run_id=run_id, owner=owner, seconds=seconds, local=self.writer.clock(),
                                  show=show, exclude=skipped, skip_shows=skip_shows, concurrency=concurrency,
                                  rate=rate)
            if picked is None or isinstance(picked, ClaimRefused):
                return picked
            run = Run(self, picked[0], picked[1], stage, owner=owner, lease_seconds=seconds, reraise=reraise,
                      run_id=run_id, renew=True)
            try:
                run.begin(claimed=True)
            except (NotReadyError, InvalidTransitionError, ApprovalRequiredError, CorruptFileError,
                    SchemaVersionError, ValidationError, EpisodeNotFoundError, ShowNotFoundError) as exc:
                # the index's answer was stale, or the file cannot be run: the next one
                log.info("statekit: claimed %s/%s for %s but could not start it (%s); trying the next",
                         picked[0], picked[1], stage, exc.one_line())
                if rate is not None:
                    leases.forget_start(run_id)
                skipped.append(picked)
                continue
            return run

    def attach(self, show: str, ep: str, stage: str, run_id: str) -> Run:
        """The handle of a run another process started and still holds (a
        worker's command: ``STATEKIT_RUN_ID``), to checkpoint, record costs or
        add assets under its lease. ``LeaseExpiredError`` unless the episode's
        file names that run and its lease is live."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        self.writer.check_stage(stage)
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValidationError("the run id is empty", hint="set STATEKIT_RUN_ID (statekit worker does)")
        m = self.writer.get(show, ep)
        lease = m.lease
        if lease is None or lease.run_id != run_id or m.stage != stage or not self.writer.lease_live(m):
            raise LeaseExpiredError(f"run {run_id} of {show}/{ep} {stage!r} does not hold the episode's lease",
                                    expected=m.version, actual=m.version, show_id=show, episode_id=ep, stage=stage)
        seconds = max(RENEW_MIN_S, (lease.expires_at - lease.acquired_at).total_seconds())
        run = Run(self, show, ep, stage, owner=lease.owner, lease_seconds=seconds, reraise=True, run_id=run_id)
        run.attached(m)
        return run

    def start(self, run: Run) -> Episode:
        """Enter the run's stage under its lease (one ``start`` event)."""
        pipeline = self.writer.pipeline
        stage = run.stage

        def start(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            ctx = {"show_id": m.show_id, "episode_id": m.episode_id, "stage": stage}
            if m.lease is not None:
                if not self.writer.lease_live(m, now):
                    raise LeaseRanOut()
                raise NotReadyError(
                    f"{m.key} is being run ({m.stage}) by {m.lease.owner} until {m.lease.expires_at.isoformat()}",
                    reason="leased", hint="ask store.next() for episodes that are ready", **ctx)
            if m.hold is not None:
                raise NotReadyError(f"{m.key} is held for a person: {m.hold}", reason="hold",
                                    hint=f"fix the cause, then run 'statekit retry {m.key}'", **ctx)
            if m.due_at is not None and now < m.due_at:
                raise NotReadyError(f"{m.key}'s retry is not due until {m.due_at.isoformat()}", reason="due",
                                    hint=f"wait, or run 'statekit retry {m.key}' to retry now", **ctx)
            if m.stage == stage and m.stage_done:
                raise NotReadyError(f"{m.key} has already done stage {stage!r}", reason="done", **ctx)
            update: dict[str, Any] = {}
            moved = m.stage != stage
            if moved:
                refusal = refuse_move(pipeline, m.stage, stage, m.approvals)
                if refusal is not None and pipeline.rank(m.stage) > pipeline.rank(stage):
                    # past the stage: the worker's next() answer went stale, its request was right then
                    raise NotReadyError(
                        f"{m.key} is at stage {m.stage!r} now, past {stage!r} (another worker ran it, or it "
                        "was moved on)", reason="moved_on", current_stage=m.stage,
                        hint="ask store.next() for episodes that are ready", **ctx)
                if refusal is not None:
                    raise refusal.error(refusal.message, **ctx, **refusal.extra)
                update = {"stage": stage, "previous_stage": m.stage, "stage_entered_at": now,
                          "attempts": {**m.attempts, stage: m.attempts.get(stage, 0) + 1},
                          "approvals": approvals_after_move(pipeline, stage, m.approvals)}
            lease = Lease(owner=run.owner, run_id=run.run_id, acquired_at=now,
                          expires_at=now + timedelta(seconds=run.lease_seconds))
            new = m.model_copy(update={**update, "version": m.version + 1, "updated_at": now, "lease": lease,
                                       "due_at": None, "hold": None, "stage_done": False, "message": None})
            return new, {"kind": "start", "from_stage": m.stage if moved else None, "to_stage": stage if moved
                         else None, "run_stage": stage, "owner": run.owner, "run_id": run.run_id,
                         "attempt": new.attempts.get(stage, 0), "lease_expires_at": lease.expires_at.isoformat()}

        try:
            return self.writer.write(run.show_id, run.episode_id, start)
        except LeaseRanOut:  # its last worker stopped: record that first, then start
            line = self.recovery.recover_one(run.show_id, run.episode_id)
            if line is not None and line.get("action") == "give_up":
                raise NotReadyError(
                    f"{run.show_id}/{run.episode_id}'s last worker stopped and its attempts are used up: "
                    "it was given up", reason="gave_up", show_id=run.show_id, episode_id=run.episode_id,
                    stage=stage, hint=f"see why with 'statekit show {run.show_id}/{run.episode_id}' or "
                                      "'statekit errors'") from None
        try:
            return self.writer.write(run.show_id, run.episode_id, start)
        except LeaseRanOut:
            raise NotReadyError(f"{run.show_id}/{run.episode_id} changed hands while starting; ask next() again",
                                reason="leased") from None

    def finish(self, run: Run) -> Episode:
        """Move on to the stage's success target, or mark the stage done (one ``finish`` event)."""
        pipeline = self.writer.pipeline
        stage = run.stage

        def finish(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            run.check(m, now)
            target = pipeline.run_target(stage)
            update: dict[str, Any] = {"version": m.version + 1, "updated_at": now, "lease": None,
                                      "message": run.message}
            if target is not None and refuse_move(pipeline, stage, target, m.approvals) is None:
                update.update(stage=target, previous_stage=stage, stage_entered_at=now, stage_done=False,
                              attempts={**m.attempts, target: m.attempts.get(target, 0) + 1},
                              approvals=approvals_after_move(pipeline, target, m.approvals))
            else:
                target = None
                update["stage_done"] = True
            return m.model_copy(update=update), {
                "kind": "finish", "run_stage": stage, "from_stage": stage if target else None, "to_stage": target,
                "message": run.message, "run_id": run.run_id, "seconds": round(run.elapsed(), 3)}

        return self.writer.write(run.show_id, run.episode_id, finish)

    def fail(self, run: Run, exc: BaseException, kind: ErrorKind | None) -> tuple[Episode, ErrorKind]:
        """Record the run's failure and apply the failure policy (``failures.plan_failure``)."""
        pipeline = self.writer.pipeline
        line: dict[str, Any] = {}

        def fail(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            run.check(m, now)
            new, event, record = plan_failure(pipeline, m, run.stage, exc, now, kind=kind, run_id=run.run_id)
            line.update(record, owner=run.owner)
            return new, event

        try:
            episode = self.writer.write(run.show_id, run.episode_id, fail)
        except StatekitError as write_error:
            log.error("statekit: the failure of %s/%s %s could not be recorded (%s); the episode is recovered "
                      "when its lease expires", run.show_id, run.episode_id, run.stage, write_error.one_line())
            raise write_error from exc
        self.recovery.record_error(line, exc)
        if line["action"] == "give_up":
            episode = self.recovery.give_up(run.show_id, run.episode_id) or episode
        return episode, ErrorKind(line["kind"])


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

    def __init__(self, runs: Runs, show: str, ep: str, stage: str, *, owner: str, lease_seconds: float,
                 reraise: bool, verify_assets: tuple[str, ...] = (), run_id: str | None = None,
                 renew: bool = True) -> None:
        self.runs = runs
        self.renew_in_background = renew
        self.show_id = show
        self.episode_id = ep
        self.stage = stage
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.reraise = reraise
        self.run_id = run_id or new_run_id()
        self.episode: Episode | None = None
        self._message: str | None = None
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.kind: ErrorKind | None = None
        self.verify_assets = verify_assets
        self._started_at: datetime | None = None
        self._temp_dir: str | None = None
        self._renewer: Renewer | None = None
        self._begun = False

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
        if not self.runs.writer.lease_live(m, now):
            raise LeaseExpiredError(
                f"run {self.run_id} of {m.key} {self.stage!r}: the lease expired (recorded until "
                f"{lease.expires_at.isoformat()}); the write was refused", **common)
        if m.stage != self.stage:
            raise LeaseExpiredError(
                f"{m.key} is at stage {m.stage!r}, no longer {self.stage!r}; the run's write was refused", **common)

    @property
    def time_left(self) -> float:
        """Seconds until the lease expires (by the store's clock)."""
        if self.episode is None or self.episode.lease is None:
            return 0.0
        return (self.episode.lease.expires_at - self.runs.writer.clock()).total_seconds()

    # --- what the body can do ----------------------------------------------------------

    @property
    def resume(self) -> dict[str, Any] | None:
        """The checkpoint an earlier attempt saved for this stage, or None.
        A damaged checkpoint counts as none (the stage starts afresh; it is
        logged, ``verify`` reports it and ``repair`` moves it aside)."""
        try:
            return self.runs.checkpoints.load(self.show_id, self.episode_id, self.stage)
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
        value = check_cost(amount)
        if value is None:
            raise ValidationError("cost needs an amount", field="cost", hint=COST_HINT)
        check_optional_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            self.check(m, now)
            new = self._renewed(m, now, cost=value)
            return new, {"kind": "cost", "cost": value, "message": note, "run_id": self.run_id}

        return self._write(change)

    def checkpoint(self, data: Mapping[str, Any], *, cost: float | None = None) -> Episode:
        """Save this stage's intermediate results (``checkpoints/<stage>.json``),
        and optionally what they cost, in one write; renews the lease."""
        value = check_cost(cost)

        def extra(m: Episode, now: datetime) -> dict[str, Any]:
            self.check(m, now)
            return self._renewed(m, now, cost=value, fields_only=True)

        with self.fenced():
            episode = self.runs.checkpoints.save(self.show_id, self.episode_id, self.stage, data, extra=extra,
                                                 event_extra={"run_id": self.run_id, "cost": value})
        return self._written(episode)

    def add_asset(self, source: Any, kind: str = "audio", name: str | None = None, *,
                  media_type: str | None = None, label: str | None = None) -> Episode:
        """``Store.add_asset`` as part of this run (lease checked and renewed)."""
        def extra(m: Episode, now: datetime) -> dict[str, Any]:
            self.check(m, now)
            return self._renewed(m, now, fields_only=True)

        with self.fenced():
            episode = self.runs.assets.add(self.show_id, self.episode_id, source, kind, name,
                                           media_type=media_type, label=label, extra=extra,
                                           event_extra={"run_id": self.run_id})
        return self._written(episode)

    def asset(self, name: str, *, verify: bool = True) -> str:
        """The path of asset ``name``, hashed first unless ``verify=False``
        (``CorruptFileError`` naming the path if its content changed)."""
        if verify:
            return self.runs.assets.verify(self.show_id, self.episode_id, name)
        return self.runs.assets.path(self.show_id, self.episode_id, name)

    def temp_path(self, suffix: str = "") -> str:
        """A fresh path for an intermediate file of this run, under
        ``.statekit/tmp/runs/<run_id>/``. Every such file is removed when the
        run ends, however it ends; after ``kill -9``, ``statekit gc`` does it."""
        if not isinstance(suffix, str) or "/" in suffix or len(suffix) > 32:
            raise ValidationError(f"suffix must be a short file name ending such as '.wav', got {suffix!r}",
                                  hint="at most 32 characters, no '/'")
        parts = (*RUN_TEMP, self.run_id)
        # made in the folder walked from the root (never through a symlink); the caller writes it by its path
        with self.runs.writer.folders.open(parts, create=True, durable=False) as folder:
            fd, path = diskio.mkstemp_at(folder, "/".join((self.runs.writer.root, *parts)), "tmp", suffix)
        os.close(fd)
        self._temp_dir = os.path.dirname(path)
        return path

    def _remove_temp(self) -> None:
        """Remove the run's temp folder, reached from the root (never through a symlink)."""
        if self._temp_dir is not None:
            self._temp_dir = None
            try:
                with self.runs.writer.folders.open_existing(RUN_TEMP) as runs:
                    if runs is not None:
                        shutil.rmtree(self.run_id, ignore_errors=True, dir_fd=runs)
            except StatekitError as exc:
                logging.getLogger("statekit").warning(
                    "statekit: the temp files of run %s were not removed (%s); 'statekit gc' removes them later",
                    self.run_id, exc.one_line())

    def _verify(self, when: str) -> None:
        for name in self.verify_assets:
            try:
                self.runs.assets.verify(self.show_id, self.episode_id, name)
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
        with self.fenced():
            episode = self.runs.writer.write(self.show_id, self.episode_id, change)
        return self._written(episode)

    # --- the lease row (index.leases) ---------------------------------------------------

    def renew(self, at: datetime | None = None) -> bool:
        """Extend this run's live lease in the index (no file write, no
        event) to ``lease_seconds`` after ``at`` (now; the database's time on
        a server); False if it is not this run's any more."""
        return self._renew(at)

    def _renew(self, at: datetime | None = None, *, fresh: bool = False) -> bool:
        """``renew``; ``fresh``: on a connection of its own (the ``Renewer``'s thread ends with the
        run, so it keeps none), else on the thread's kept one."""
        writer = self.runs.writer
        return writer.index.leases.renew(self.show_id, self.episode_id, self.run_id, self.lease_seconds,
                                         at or writer.clock(), owner=self.owner, stage=self.stage, fresh=fresh)

    def _written(self, episode: Episode) -> Episode:
        """After a write of this run: the lease row renewed from the time the
        write renewed the file's lease (on SQLite they then expire together;
        renewed only after the commit, so the row never outlives the file's
        lease of a worker killed mid-write)."""
        self.episode = episode
        lease = episode.lease
        if lease is not None and lease.run_id == self.run_id:
            try:
                self.renew(lease.expires_at - timedelta(seconds=self.lease_seconds))
            except StatekitError as exc:
                log.warning("statekit: could not renew the lease row of run %s (%s)", self.run_id, exc.one_line())
        return episode

    def _fence(self) -> None:
        """Right before a write of this run commits: its lease is still live."""
        writer = self.runs.writer
        if self._begun and not writer.index.leases.holds(self.show_id, self.episode_id, self.run_id,
                                                         writer.clock()):
            version = self.episode.version if self.episode is not None else 0
            raise LeaseExpiredError(
                f"run {self.run_id} of {self.show_id}/{self.episode_id} {self.stage!r} lost its lease before its "
                "write committed; the write was refused", expected=version, actual=version, show_id=self.show_id,
                episode_id=self.episode_id, stage=self.stage, owner=self.owner)

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """The writes in the block commit only while this run holds its lease."""
        with self.runs.writer.fenced(self._fence):
            yield

    # --- start and finish --------------------------------------------------------------

    def begin(self, *, claimed: bool = False) -> None:
        """Take the lease (its row in the index, unless ``claimed`` took it),
        then write the run's start to the episode; renewals start."""
        if self._begun:
            return
        writer = self.runs.writer
        if not claimed:
            try:
                limit = writer.config.limits.get(self.stage)
                window = limit.window if limit is not None else None
                holder = writer.index.leases.take(self.show_id, self.episode_id, run_id=self.run_id,
                                                  owner=self.owner, stage=self.stage, seconds=self.lease_seconds,
                                                  local=writer.clock(), rate_window=window[1] if window else None)
            except IndexUnavailableError as exc:  # the file's lease still fences the run
                log.warning("statekit: run %s of %s/%s holds no lease row (%s)", self.run_id, self.show_id,
                            self.episode_id, exc.one_line())
                holder = None
            if holder is not None:
                raise NotReadyError(
                    f"{self.show_id}/{self.episode_id} is being run ({holder.stage}) by {holder.owner} until "
                    f"{holder.expires_at.isoformat()}", reason="leased", show_id=self.show_id,
                    episode_id=self.episode_id, stage=self.stage,
                    hint="ask store.next() for episodes that are ready")
        try:
            self.episode = self.runs.start(self)
        except BaseException:
            self._release()
            raise
        self._begun = True
        self._started_at = writer.clock()
        if self.renew_in_background:
            self._renewer = Renewer(self)

    def attached(self, episode: Episode) -> None:
        """This handle acts for a run already begun elsewhere (``Runs.attach``):
        its writes are fenced; it neither renews nor ends the run."""
        self.episode = episode
        self._begun = True

    def _release(self) -> None:
        """Stop renewing and give the lease row back (best effort: it expires anyway)."""
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
        try:
            self.runs.writer.index.leases.release(self.show_id, self.episode_id, self.run_id)
        except StatekitError as exc:
            log.warning("statekit: the lease row of run %s was not released (%s); it expires", self.run_id,
                        exc.one_line())

    def __enter__(self) -> Run:
        self.begin()
        if self.verify_assets:
            try:  # the input is checked before any work is done on it
                self._verify("before")
            except StatekitError as exc:  # recorded as the stage's failure, and raised (the body cannot run)
                try:
                    self._fail(exc)
                finally:
                    self._remove_temp()
                    self._release()
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
                with self.fenced():
                    self.episode = self.runs.finish(self)
                self.outcome = "succeeded"
                return False
            return self._fail(exc)
        finally:
            self._remove_temp()
            self._release()

    def _fail(self, exc: BaseException) -> bool:
        """Record ``exc`` as this run's failure; True if it is not to be raised."""
        self.outcome = "failed"
        self.error = exc
        if isinstance(exc, LeaseExpiredError):
            return False  # the episode is not ours any more: nothing to record, the error says why
        kind = ErrorKind.INTERRUPTED if not isinstance(exc, Exception) else None
        kind = getattr(exc, "statekit_kind", None) or kind  # a worker's command: its exit code's kind
        with self.fenced():
            self.episode, self.kind = self.runs.fail(self, exc, kind)
        return not self.reraise and isinstance(exc, Exception)

    def elapsed(self) -> float:
        return 0.0 if self._started_at is None else (self.runs.writer.clock() - self._started_at).total_seconds()




class Renewer:
    """Renews a run's lease row in the background, every third of its
    length, until stopped or the lease is lost (then the run's next write is
    refused: ``Run.check`` and the commit's fence).

    A worker busy (or stuck) inside its run keeps the lease: the renewals go
    on while it holds the ``Run``. A worker that is killed stops renewing
    with its process, and so does one that drops its ``Run`` unfinished (the
    renewer holds it weakly: nothing could end that run any more); either
    way the lease runs out within its length and ``recover`` or a claim takes
    the episode over."""

    def __init__(self, run: Run) -> None:
        self._run = weakref.ref(run)
        self.run_id = run.run_id
        self.interval = max(RENEW_MIN_S, run.lease_seconds / 3)
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name=f"statekit-lease-{run.run_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            run = self._run()
            if run is None:  # the run's handle was dropped unfinished: let the lease run out
                return
            try:
                if not run._renew(fresh=True):
                    self.lost = True
                    log.warning("statekit: run %s of %s/%s lost its lease; its writes will be refused",
                                run.run_id, run.show_id, run.episode_id)
                    return
            except StatekitError as exc:  # the database is away: try again, the lease may still hold
                log.warning("statekit: could not renew the lease of run %s (%s)", run.run_id, exc.one_line())
            finally:
                del run

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
