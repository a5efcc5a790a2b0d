"""History for people: every committed version of an episode, rebuilt from its log.

A chained log (``eventlog``: each event carries its patch, the first the whole
data) replays into every version; ``history`` returns them as models,
``at`` one of them, ``diff`` what changed between two (or between the
committed version and a pending hand edit of the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import eventlog
from .codecs import same
from .errors import CorruptFileError, ValidationError
from .ids import check_id
from .models import Episode
from .writes import Writer


@dataclass
class Change:
    """One field that differs between two versions (``None`` where a side lacks it)."""

    field: str
    before: Any
    after: Any


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """The top-level fields that differ, in the models' field order."""
    keys = list(dict.fromkeys([*before, *after]))
    return [Change(k, before.get(k), after.get(k)) for k in keys if not same(before.get(k), after.get(k))]


class History:
    """Versions of one store's episodes, read through its ``writer`` (nothing is written)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def versions(self, show: str, ep: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, data) of every committed version the log rebuilds, oldest first."""
        committed = self.writer.get(show, ep)
        path = self.writer.paths(show, ep).events
        found = eventlog.replay(eventlog.read_events(path, committed.version, strict=False), committed.version, path)
        if not found:
            raise CorruptFileError(f"{path}: the log holds no history to rebuild (it was written before the "
                                   "ledger)", path=path, show_id=show, episode_id=ep,
                                   hint="'statekit migrate' seals older logs; history starts from the seal")
        return found

    def history(self, show: str, ep: str) -> list[Episode]:
        """Every committed version as an ``Episode``, oldest first (from the log's first
        ``doc``: a log sealed by ``migrate`` starts there)."""
        return [Episode.model_validate(data) for _version, data in self.versions(show, ep)]

    def at(self, show: str, ep: str, version: int) -> Episode:
        """Committed ``version`` of the episode."""
        if type(version) is not int or version < 1:
            raise ValidationError(f"version must be a positive integer, got {version!r}")
        for number, data in self.versions(show, ep):
            if number == version:
                return Episode.model_validate(data)
        raise ValidationError(f"{show}/{ep} has no committed version {version} in its log",
                              show_id=show, episode_id=ep,
                              hint=f"'statekit show {show}/{ep}' shows the current version; versions start "
                                   "at the log's first full copy")

    def diff(self, show: str, ep: str, first: int | None = None, second: int | None = None) -> list[Change]:
        """Field by field: ``first`` -> ``second``. With neither: the committed version ->
        its pending hand edit if there is one, else the version before -> the committed one.
        With only ``first``: ``first`` -> the committed version."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        for v in (first, second):
            if v is not None and (type(v) is not int or v < 1):
                raise ValidationError(f"versions must be positive integers, got {v!r}")
        committed = self.writer.get(show, ep)
        if first is None and second is None and committed.pending is not None:
            if committed.pending.get("fields") is None:
                raise ValidationError(f"{committed.pending['path']}: the pending edit cannot be read "
                                      f"({committed.pending.get('error')})", show_id=show, episode_id=ep,
                                      hint=f"fix the file, or 'statekit revert {show}/{ep}' throws the edit away")
            edited = self.writer.load(show, ep)[1].model
            return field_changes(committed.model_dump(mode="json"), edited.model_dump(mode="json"))
        found = dict(self.versions(show, ep))
        if second is None:
            second = committed.version
        if first is None:
            first = max((v for v in found if v < second), default=second)
        for v in (first, second):
            if v not in found:
                raise ValidationError(f"{show}/{ep} has no committed version {v} in its log",
                                      show_id=show, episode_id=ep)
        return field_changes(found[first], found[second])
