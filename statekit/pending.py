"""The ledger's view of an episode, and adopting a person's edit of its file.

``Ledgers`` is the part of ``writes.Writer`` that answers "which version is
committed?" (the one rule is ``eventlog.committing``): ``ledger_of`` for a file
(free for one this process committed, else one read of the log's end),
``log_ledger`` whatever the file holds, ``committed_data`` (replayed from the
log), ``committed_view`` (what every read returns), and the adoption of a
pending hand edit as a normal write (``adopt`` for ``sync``; ``_adopt_pending``
before a write), which commits through the writer's own ``_commit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import eventlog
from .codecs import Parsed, line_of, same
from .errors import (
    CorruptFileError,
    IndexUnavailableError,
    SchemaVersionError,
    StatekitError,
    UnsafePathError,
    ValidationError,
)
from .eventlog import Ledger
from .ids import check_id
from .models import LEDGER_SCHEMA, Episode, StoreConfig
from .parsing import sha256
from .pipeline import Pipeline, refuse_move

if TYPE_CHECKING:
    from .index import Index
    from .layout import EpisodePaths
    from .locks import Locks


class Ledgers:
    """Committed vs pending for ``writes.Writer`` (a base class of it: the names
    below are the writer's)."""

    if TYPE_CHECKING:
        config: StoreConfig
        locks: Locks
        clock: Callable[[], datetime]

        @property
        def pipeline(self) -> Pipeline: ...
        @property
        def index(self) -> Index: ...
        def paths(self, show: str, ep: str) -> EpisodePaths: ...
        def load(self, show: str, ep: str, folder: int | None = None) -> tuple[str, Parsed]: ...
        def episode_folder(self, show: str, ep: str) -> AbstractContextManager[int]: ...
        def unique_claims(self, show: str, ep: str, before: Mapping[str, Any] | None, after: Mapping[str, Any],
                          edited: tuple[str, bytes] | None = None) -> AbstractContextManager[None]: ...
        def commit(self, path: str, current: Parsed | None, new: Episode, event: dict[str, Any],
                   committed: int | None = None, template: Parsed | None = None,
                   replaced: bytes | None = None, *, folder: int, ledger: Ledger | None = None,
                   base: dict[str, Any] | None = None) -> Episode: ...
        def _commit(self, path: str, current: Parsed | None, new: Episode, event: dict[str, Any],
                    committed: int | None = None, template: Parsed | None = None,
                    replaced: bytes | None = None, *, folder: int, ledger: Ledger | None = None,
                    base: dict[str, Any] | None = None, seal: bool = False) -> Parsed: ...

    @property
    def chained(self) -> bool:
        """Events are chained and carry patches (a store at ``LEDGER_SCHEMA`` or later)."""
        return self.config.schema_version >= LEDGER_SCHEMA

    def ledger_of(self, path: str, parsed: Parsed, folder: int) -> Ledger | None:
        """What the log says of the file ``parsed`` (read in ``folder``): committed, or a
        pending hand edit. None for a log without a chain (written before the ledger):
        those keep the rules they were written under (the file is taken as committed).
        Costs nothing for a file this process committed; else one read of the log's end."""
        if parsed.log_hash is not None and parsed.log_size is not None:
            return Ledger(parsed.model.version, parsed.log_hash, parsed.log_size, False, parsed.dumped)
        last, before = eventlog.read_tail(os.path.dirname(path) + "/events.jsonl", dir_fd=folder)
        if last is None or not eventlog.is_chained(last.event):
            return None
        sha = parsed.sha256 or sha256(parsed.raw)
        parsed.sha256 = sha
        which, pending = eventlog.committing(last.event, before.event if before is not None else None, sha,
                                             parsed.model.version, lambda: self._index_version(parsed.model))
        line = last if which == 0 else before
        assert line is not None
        return Ledger(line.event["version"], line.hash, line.end, pending)

    def _index_version(self, model: Episode) -> int | None:
        return self._index_version_of(model.show_id, model.episode_id)

    def _index_version_of(self, show: str, ep: str) -> int | None:
        try:
            return self.index.version_of(show, ep)
        except IndexUnavailableError:
            return 1 << 62  # when in doubt, keep the line: it may be committed

    def log_ledger(self, show: str, ep: str, folder: int) -> Ledger | None:
        """The committed end of the episode's chained log whatever its file holds (the
        file is taken as pending); None for a log without a chain."""
        last, before = eventlog.read_tail(self.paths(show, ep).events, dir_fd=folder)
        if last is None or not eventlog.is_chained(last.event):
            return None
        line = last
        if before is not None and last.event["version"] == before.event["version"] + 1:
            # the file cannot tell whether the last write got to its rename: the index can
            indexed = self._index_version_of(show, ep)
            if indexed is None or indexed < last.event["version"]:
                line = before
        return Ledger(line.event["version"], line.hash, line.end, True)

    def committed_data(self, show: str, ep: str, version: int, folder: int | None = None) -> dict[str, Any]:
        """The data of committed ``version``, replayed from the log (``CorruptFileError``
        if the log cannot give it: damaged, or written before the ledger)."""
        log_path = self.paths(show, ep).events
        versions = eventlog.replay(eventlog.read_events(log_path, version, strict=False, dir_fd=folder), version,
                                   log_path, last_only=True)
        if not versions or versions[-1][0] != version:
            raise CorruptFileError(f"{log_path}: the log cannot rebuild version {version} (it was written before "
                                   "the ledger, or is damaged)", path=log_path,
                                   hint="'statekit migrate' seals older logs; 'statekit repair' restores from backups")
        return versions[-1][1]

    def pending_fields(self, committed: dict[str, Any], edited: Episode) -> list[str]:
        """The fields a person's edit changed (``version`` and ``updated_at`` aside)."""
        after = edited.model_dump(mode="json")
        keys = list(dict.fromkeys([*committed, *after]))
        return [k for k in keys if k not in ("version", "updated_at") and not same(committed.get(k), after.get(k))]

    def _adopt_pending(self, path: str, current: Parsed, ledger: Ledger, folder: int,
                       stage_before: str | None = None, absorb_layout: bool = True) -> tuple[Parsed, Ledger, list[str]]:
        """Adopt a valid pending edit (one ``external_edit`` event; the move judged from
        the committed stage). Refuses an illegal one, naming file, line and field."""
        model: Episode = current.model
        show, ep = model.show_id, model.episode_id
        base = ledger.data if ledger.data is not None else self.committed_data(show, ep, ledger.version, folder)
        committed = Episode.model_validate(base)
        was = stage_before or committed.stage
        if model.stage != was:
            refusal = refuse_move(self.pipeline, was, model.stage, committed.approvals)
            if refusal is not None:
                line = line_of(current.raw, ("stage",))
                raise ValidationError(
                    f"{path}:{line}: stage: the hand edit moves {was!r} -> {model.stage!r}, which the pipeline "
                    f"does not allow ({refusal.message}); nothing was written",
                    path=path, line=line, field="stage", show_id=show, episode_id=ep,
                    hint=f"fix the file, or run 'statekit revert {show}/{ep}' to throw the edit away")
        fields = self.pending_fields(base, model)
        moved = model.stage != was
        if absorb_layout and not fields and not moved:  # only comments or layout changed: the next event commits it
            current.model = model.model_copy(update={"version": ledger.version, "updated_at": committed.updated_at})
            return current, Ledger(ledger.version, ledger.line_hash, ledger.end, False, base), fields
        new = model.model_copy(update={"version": ledger.version + 1, "updated_at": self.clock()})
        event = {"kind": "external_edit", "fields": fields, "from_stage": was if moved else None,
                 "to_stage": model.stage if moved else None}
        mine = (committed.show_id, committed.episode_id) == (show, ep)  # a log copied in from another folder is not
        with self.unique_claims(show, ep, committed.metadata if mine else None, new.metadata,
                                edited=(path, current.raw)):
            written = self._commit(path, current, new, event, committed=ledger.version, folder=folder,
                                   ledger=ledger, base=base)
        return written, self._ledger_after(written), fields

    @staticmethod
    def _ledger_after(written: Parsed) -> Ledger:
        return Ledger(written.model.version, written.log_hash, written.log_size or 0, False, written.dumped)

    def committed_view(self, show: str, ep: str) -> Episode:
        """The committed version of the episode, saying if a pending edit exists
        (``Episode.pending``); what every read returns."""
        with self.episode_folder(show, ep) as folder:
            try:
                path, parsed = self.load(show, ep, folder)
            except (CorruptFileError, ValidationError, SchemaVersionError) as exc:
                newer = isinstance(exc, SchemaVersionError) and type(exc.found) is int and exc.found > exc.supported
                shown = None if newer else self._committed_of_unreadable(show, ep, folder)  # newer: refused
                if shown is None:
                    raise
                return shown.with_pending(exc.path or self.paths(show, ep).files[0], None, exc.one_line())
            if not self.chained:
                return parsed.model  # type: ignore[no-any-return]
            try:
                ledger = self.ledger_of(path, parsed, folder)
                if ledger is None or not ledger.pending:
                    return parsed.model  # type: ignore[no-any-return]
                base = self.committed_data(show, ep, ledger.version, folder)
            except (CorruptFileError, UnsafePathError):  # a log that cannot say (verify reports it): the
                return parsed.model  # type: ignore[no-any-return]  # file is read as it is, as before the ledger
            return Episode.model_validate(base).with_pending(path, self.pending_fields(base, parsed.model))

    def _committed_of_unreadable(self, show: str, ep: str, folder: int) -> Episode | None:
        """The committed version of an episode whose file cannot be read, if its chained log gives it."""
        if not self.chained:
            return None
        ledger = self.log_ledger(show, ep, folder)
        if ledger is None:
            return None
        try:
            return Episode.model_validate(self.committed_data(show, ep, ledger.version, folder))
        except (StatekitError, ValueError):
            return None


    def adopt(self, show: str, ep: str, before: dict[str, Any] | None,
              stage_before: str | None = None) -> tuple[Episode, list[str]]:
        """Adopt a person's valid edit of an episode file as a normal write:
        version + 1 over the log, one ``external_edit`` event naming the
        changed fields, comments kept. ``before``: the last indexed data.
        ``stage_before``: the stage the log last recorded; an edit that moved
        the stage records the move (``from_stage``/``to_stage``), so the
        next edit's move is checked from the stage the file now has."""
        changed: list[str] = []
        log_path = self.paths(show, ep).events
        logged = 0

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            after = m.model_dump(mode="json")
            ignore = {"version", "updated_at"}
            if before is None:
                changed.extend(k for k in after if k not in ignore)
            else:
                changed.extend(k for k in after if k not in ignore and not same(before.get(k), after[k]))
            new = m.model_copy(update={"version": logged + 1, "updated_at": now})
            moved = stage_before is not None and m.stage != stage_before
            return new, {"kind": "external_edit", "fields": list(changed),
                         "from_stage": stage_before if moved else None, "to_stage": m.stage if moved else None}

        check_id(show, "show id")
        check_id(ep, "episode id")
        with self.locks.episode(show, ep), self.episode_folder(show, ep) as folder:
            path, current = self.load(show, ep, folder)
            ledger = self.ledger_of(path, current, folder) if self.chained else None
            if ledger is not None:
                if not ledger.pending:
                    return current.model, []
                written, _ledger, fields = self._adopt_pending(path, current, ledger, folder, stage_before,
                                                               absorb_layout=False)
                return written.model, fields
            # the version the log is committed at. One event past the file's version that
            # the index never saw is the tail of a write that crashed before its rename (it
            # is dropped, as every write drops it); one the index saw was committed, and the
            # person lowered ``version`` by hand.
            logged = max(eventlog.last_logged_version(log_path, dir_fd=folder), 0)
            seen = before.get("version") if before is not None else None
            if logged == current.model.version + 1 and not (isinstance(seen, int) and seen >= logged):
                logged = current.model.version
            new, event = change(current.model, self.clock())
            indexed = before.get("metadata") if before is not None else None
            with self.unique_claims(show, ep, indexed if isinstance(indexed, Mapping) else None, new.metadata,
                                    edited=(path, current.raw)):
                return self.commit(path, current, new, event, committed=logged, folder=folder), changed

