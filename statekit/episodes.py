"""Episodes: create, delete, and the moves and edits a person or a worker asks for.

Each operation checks its arguments, then hands the write path (``writes``)
a pure ``change`` that decides from the committed episode (the pipeline's
``refuse_move`` judges every stage move); nothing here opens a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from . import eventlog
from . import files as diskio
from .codecs import same
from .errors import StatekitError, ValidationError
from .ids import check_id
from .layout import trash_parts
from .models import (
    COST_HINT,
    PRIORITY_MAX,
    Approval,
    Episode,
    Event,
    add_cost,
    check_optional_text,
    check_text,
    cost_sum,
)
from .parsing import invalid, stamp
from .pipeline import approvals_after_move, refuse_move
from .shows import Shows
from .writes import Writer

log = logging.getLogger("statekit")

UNSET: Any = object()
"""``update``'s default: the field is not changed."""


def check_cost(cost: object) -> float | None:
    """A cost argument as a float (None stays None); ``ValidationError`` for
    anything but a finite number >= 0. What it adds up to is checked by
    ``add_cost`` under the episode's lock."""
    if cost is None:
        return None
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise ValidationError(f"cost must be a number, got {cost!r}", field="cost", hint=COST_HINT)
    try:
        value = float(cost)
    except OverflowError:  # an int beyond any float
        value = float("inf")
    if not (value >= 0 and value != float("inf")):
        raise ValidationError(f"cost must be a finite number >= 0, got {cost!r}", field="cost", hint=COST_HINT)
    return value


def with_fields(m: Episode, given: Mapping[str, Any]) -> tuple[Episode, list[str]]:
    """``m`` with the ``given`` fields replaced whole, validated as a file is
    (``ValidationError`` naming the field), and the names of those that changed."""
    before = m.model_dump(mode="json")
    data = {**before, **{k: dict(v) if isinstance(v, Mapping) else v for k, v in given.items()}}
    try:
        new = Episode.model_validate(data)
    except PydanticValidationError as exc:
        raise invalid(exc, None, None, "episode") from None
    after = new.model_dump(mode="json")
    return new, [k for k in given if not same(before[k], after[k])]


class Episodes:
    """Episode operations over the store's ``writer`` and ``shows``."""

    def __init__(self, writer: Writer, shows: Shows) -> None:
        self.writer = writer
        self.shows = shows

    def events(self, show: str, ep: str) -> list[Event]:
        """The episode's committed events, oldest first."""
        episode = self.writer.get(show, ep)
        path = self.writer.paths(show, ep).events
        return eventlog.validate_events(path, eventlog.read_events(path, episode.version))

    def episode_path(self, show: str, ep: str) -> str:
        """The path of the episode's file, for a person or a tool to open."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        paths = self.writer.require_folders(show, ep)
        for path in paths.files:
            if os.path.lexists(path):
                return path
        raise self.writer.missing(show, ep)

    def create(self, show: str, ep: str, *, title: str = "", metadata: Mapping[str, Any] | None = None,
               files: Mapping[str, str] | None = None) -> Episode:
        """A new episode at the pipeline's initial stage (see ``Store.create``)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        now = self.writer.clock()
        initial = self.writer.pipeline.initial
        data = {
            "show_id": show, "episode_id": ep, "title": title, "stage": initial, "version": 1,
            "created_at": now, "updated_at": now, "stage_entered_at": now, "attempts": {initial: 1},
            "metadata": {} if metadata is None else metadata, "files": {} if files is None else files,
        }
        try:
            model = Episode.model_validate(data)
        except PydanticValidationError as exc:
            raise invalid(exc, None, None, "episode") from None
        return self.create_from(model, {"kind": "create", "to_stage": initial})

    def create_from(self, model: Episode, event: dict[str, Any]) -> Episode:
        """Write a new episode (show lock, then the write path's create),
        then list it in its show."""
        show, ep = model.show_id, model.episode_id
        with self.writer.locks.show(show):
            current = self.shows.read(show)[1]  # a damaged show.yaml stops the create before anything is written
            created = self.writer.create(model, event)
            # show.yaml lists only a hand-set order: a new episode follows by creation, nothing to rewrite
            if current is None:  # a new show: its show.yaml
                self.shows.list_in(show, lambda ids: ids)
            elif ep in current.order:  # a person listed it before it existed: the index puts it in place
                self.writer.index_quietly(f"the order of show {show}", positions=(show, current.order))
        return created

    def delete(self, show: str, ep: str) -> str:
        """Move the episode's folder into the trash (see ``Store.delete``)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        writer = self.writer
        with writer.locks.show(show):
            self.shows.read(show)  # a damaged show.yaml stops the delete before anything moves
            with writer.locks.episode(show, ep):
                if not writer.exists(show, ep):
                    raise writer.missing(show, ep)
                writer.refuse_if_leased(show, ep, "deleted")
                target = f"{writer.root}/.statekit/trash/{show}/{ep}.{stamp(writer.clock())}"
                source = writer.paths(show, ep).dir
                with writer.folders.open(("shows", show, "episodes")) as episodes, \
                        writer.folders.open(trash_parts(show), create=True) as trash:
                    diskio.move(writer.disk, source, target, src_dir_fd=episodes, dst_dir_fd=trash)
                writer.forget(source + os.sep)
                writer.index_quietly(f"the deletion of {show}/{ep}", removed=[(show, ep)])
                try:  # the episode is gone (durably): its backups follow, or stay for gc
                    writer.backups.to_trash(show, ep, os.path.basename(target)[len(ep) + 1:])
                except (StatekitError, OSError) as exc:
                    log.warning("statekit: %s/%s was deleted, but its backups could not follow it to the "
                                "trash (%s); 'statekit gc' removes them later", show, ep, exc)
            self.shows.list_in(show, lambda ids: [i for i in ids if i != ep])
        return target

    def advance(self, show: str, ep: str, stage: str, *, message: str | None = None, cost: float | None = None,
                expected_version: int | None = None, metadata: Mapping[str, Any] | None = None,
                files: Mapping[str, str] | None = None) -> Episode:
        """Move the episode to ``stage`` (see ``Store.advance``)."""
        check_id(stage, "stage")
        check_optional_text(message, "message")
        cost = check_cost(cost)
        given = {k: v for k, v in (("metadata", metadata), ("files", files)) if v is not None}
        writer = self.writer
        pipeline = writer.pipeline

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            refusal = refuse_move(pipeline, m.stage, stage, m.approvals)
            if refusal is not None:
                raise refusal.error(refusal.message, show_id=m.show_id, episode_id=m.episode_id, stage=stage,
                                    **refusal.extra)
            writer.refuse_if_held(m, "moved", now)
            costs = m.costs if cost is None else add_cost(m.costs, m.stage, cost, m.key)
            new = m.model_copy(update={
                "stage": stage, "previous_stage": m.stage, "version": m.version + 1, "updated_at": now,
                "stage_entered_at": now,
                "message": message, "costs": costs, "cost_total": cost_sum(costs),
                "attempts": {**m.attempts, stage: m.attempts.get(stage, 0) + 1},
                "approvals": approvals_after_move(pipeline, stage, m.approvals),
                # a move starts the new stage afresh: no lease, backoff, hold or done mark carries over
                "lease": None, "due_at": None, "hold": None, "stage_done": False,
            })
            event: dict[str, Any] = {"kind": "advance", "from_stage": m.stage, "to_stage": stage,
                                     "message": message, "cost": cost}
            if given:
                new, changed = with_fields(new, given)
                event["fields"] = changed or None
            return new, event

        return writer.write(show, ep, change, expected_version)

    def update(self, show: str, ep: str, given: Mapping[str, Any], expected_version: int | None = None) -> Episode:
        """Replace the ``given`` non-stage fields whole (see ``Store.update``)."""
        if not given:
            raise ValidationError("update needs at least one of title, metadata, files, message")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            new, changed = with_fields(m, given)
            if not changed:
                return None
            return new.model_copy(update={"version": m.version + 1, "updated_at": now}), {
                "kind": "update", "fields": changed}

        return self.writer.write(show, ep, change, expected_version)

    def approve(self, show: str, ep: str, stage: str, *, by: str, note: str | None = None,
                expected_version: int | None = None) -> Episode:
        """Record a person's approval to enter the gated ``stage`` (see ``Store.approve``)."""
        writer = self.writer
        writer.check_stage(stage)
        if stage not in writer.pipeline.gates:
            raise ValidationError(
                f"stage {stage!r} has no approval gate in pipeline {writer.pipeline.name!r}",
                hint="gated stages: " + (", ".join(writer.pipeline.gates) or "none"),
            )
        if not isinstance(by, str) or not by.strip():
            raise ValidationError("approve needs the name of the person approving (by=...)",
                                  hint="pass by='their name'; nothing was changed")
        check_text(by, "by")
        check_optional_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            try:
                approval = Approval(by=by.strip(), at=now, given_at_stage=m.stage, note=note)
            except PydanticValidationError as exc:
                raise invalid(exc, None, None, "approval") from None
            new = m.model_copy(update={"version": m.version + 1, "updated_at": now,
                                       "approvals": {**m.approvals, stage: approval}})
            return new, {"kind": "approve", "gate": stage, "by": approval.by, "message": note}

        return writer.write(show, ep, change, expected_version)

    def prioritize(self, show: str, ep: str, priority: int, *, note: str | None = None,
                   expected_version: int | None = None) -> Episode:
        """Set the episode's ``priority`` (see ``Store.prioritize``): one ``prioritize`` event."""
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > PRIORITY_MAX:
            raise ValidationError(f"priority must be a whole number in [-{PRIORITY_MAX}, {PRIORITY_MAX}], "
                                  f"got {priority!r}", field="priority",
                                  hint="higher is claimed first; 0 is the default; nothing was changed")
        check_optional_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            if m.priority == priority:
                return None
            return m.model_copy(update={"version": m.version + 1, "updated_at": now, "priority": priority}), {
                "kind": "prioritize", "priority": priority, "previous_priority": m.priority, "message": note}

        return self.writer.write(show, ep, change, expected_version)
