"""Recovery: bring back episodes whose worker stopped, release held ones, log failures.

An episode whose lease expired goes to the failure stage with an
``interrupted`` error (one ``recovered`` event) and the failure policy
applies (``failures``); a give-up a stopped process left half done is
completed. ``.statekit/errors.jsonl`` holds one line per failure, for people
and log shippers (the episode's ``error_history`` is the truth).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import eventlog
from . import files as diskio
from .codecs import json_lines
from .errors import InvalidTransitionError, StatekitError, ValidationError
from .failures import giving_up, interrupted, log_failure, plan_failure, plan_give_up
from .models import Episode, check_optional_text, check_text
from .pipeline import refuse_move
from .taxonomy import ErrorKind
from .writes import Writer

if TYPE_CHECKING:
    from .index.scan import SyncReport

log = logging.getLogger("statekit")


class LeaseRanOut(Exception):
    """The episode's lease has expired: its run must be recovered before another starts."""


@dataclass
class RecoverReport:
    """What ``recover`` did: runs found interrupted, give-ups completed."""

    recovered: list[dict[str, Any]] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    synced: SyncReport | None = None


class Recovery:
    """Recovery of one store's episodes, written through its ``writer``."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def give_up(self, show: str, ep: str) -> Episode | None:
        """Complete a give-up: failure stage -> give-up stage (one ``give_up`` event)."""
        pipeline = self.writer.pipeline
        done: list[bool] = []

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            if not giving_up(pipeline, m):
                return None
            done.append(True)
            return plan_give_up(pipeline, m, now)

        episode = self.writer.write(show, ep, change)
        return episode if done else None

    def recover_one(self, show: str, ep: str) -> dict[str, Any] | None:
        """If the episode's lease has expired, record the interrupted run
        (one ``recovered`` event) and apply the failure policy."""
        pipeline = self.writer.pipeline
        line: dict[str, Any] = {}
        cause: list[BaseException] = []

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            if m.lease is None or self.writer.lease_live(m, now):
                return None
            failure = pipeline.failure_stage
            refusal = refuse_move(pipeline, m.stage, failure, m.approvals) if failure is not None else None
            if refusal is not None:  # the file holds a stage its run cannot fail from (a hand edit)
                raise InvalidTransitionError(
                    f"{m.key}'s worker stopped, but its file holds stage {m.stage!r}, from which the failure "
                    f"stage {failure!r} cannot be reached ({refusal.message}); nothing was written",
                    hint=f"put the stage the run was in back in the file (or another legal one), then run "
                         f"'statekit recover' again; 'statekit history {m.key}' shows the moves",
                    show_id=m.show_id, episode_id=m.episode_id, src=m.stage, dst=failure,
                    allowed=list(pipeline.next_stages(m.stage)))
            why = interrupted(m)
            cause.append(why)
            new, event, record = plan_failure(pipeline, m, m.stage, why, now, kind=ErrorKind.INTERRUPTED,
                                              run_id=m.lease.run_id, event_kind="recovered")
            line.update(record, owner=m.lease.owner)
            return new, event

        self.writer.write(show, ep, change)
        if not line:
            return None
        self.record_error(line, cause[0])
        if line["action"] == "give_up":
            self.give_up(show, ep)
        return line

    def recover(self, report: RecoverReport, expired: Iterable[tuple[str, str]],
                in_failure_stage: Iterable[dict[str, Any]]) -> RecoverReport:
        """Recover each of the ``expired`` episodes (whose lease the index says
        ran out), then complete the give-ups among ``in_failure_stage``
        (index rows' data of the failure stage)."""
        pipeline = self.writer.pipeline
        for show, ep in expired:
            try:
                line = self.recover_one(show, ep)
            except StatekitError as exc:
                report.problems.append(f"{show}/{ep}: {exc.one_line()}")
                continue
            if line is not None:
                report.recovered.append({"episode": f"{show}/{ep}", "stage": line["stage"],
                                         "owner": line.get("owner"), "action": line["action"],
                                         "attempt": line.get("attempt"), "due_at": line.get("due_at")})
                if line["action"] == "give_up":
                    report.gave_up.append(f"{show}/{ep}")
        for doc in in_failure_stage:
            m = Episode.model_validate(doc)
            if giving_up(pipeline, m) and m.key not in report.gave_up:
                try:
                    if self.give_up(m.show_id, m.episode_id) is not None:
                        report.gave_up.append(m.key)
                except StatekitError as exc:
                    report.problems.append(f"{m.key}: {exc.one_line()}")
        return report

    def retry_now(self, show: str, ep: str, *, by: str | None = None, note: str | None = None) -> Episode:
        """Release an episode for its next attempt now (see ``Store.retry_now``)."""
        if by is not None and (not isinstance(by, str) or not by.strip()):
            raise ValidationError("by must be the name of the person releasing the episode",
                                  hint="pass by='their name', or leave it out; nothing was changed")
        check_text(by, "by")
        check_optional_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            if m.hold is None and (m.due_at is None or m.due_at <= now):
                raise ValidationError(
                    f"{m.key} is not waiting for a retry (stage {m.stage!r}, no hold, no backoff)",
                    hint="'statekit show SHOW/EP' shows its state; 'statekit next STAGE' lists what is ready",
                    show_id=m.show_id, episode_id=m.episode_id)
            new = m.model_copy(update={"hold": None, "due_at": None, "version": m.version + 1, "updated_at": now})
            return new, {"kind": "retry", "message": note, "by": by.strip() if by else None,
                         "released": "hold" if m.hold is not None else "backoff"}

        return self.writer.write(show, ep, change)

    def record_error(self, line: dict[str, Any], exc: BaseException) -> None:
        """One line in ``.statekit/errors.jsonl`` and one log record. The
        episode's ``error_history`` (already durable) is the truth; this log
        is for people and log shippers, so a failure to write it is only
        logged."""
        log_failure(log, line, exc)
        writer = self.writer
        path = os.path.join(writer.root, ".statekit", "errors.jsonl")
        try:
            with writer.folders.open((".statekit",)) as folder:
                fd = writer.disk.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | diskio.O_NOFOLLOW
                                      | diskio.O_CLOEXEC, dir_fd=folder)
            try:
                diskio.write_all(writer.disk, fd, eventlog.event_line(line))
            finally:
                writer.disk.close(fd)
        except (OSError, StatekitError) as exc_:
            log.warning("statekit: could not append to %s (%s)", path, exc_)

    def error_log(self) -> list[dict[str, Any]]:
        """The lines of ``.statekit/errors.jsonl``, oldest first (damaged lines skipped)."""
        return json_lines(diskio.read_file(os.path.join(self.writer.root, ".statekit", "errors.jsonl"), limit=None))
