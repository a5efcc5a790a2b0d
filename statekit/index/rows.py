"""The index's rows, derived from the files: pure functions, no database.

What the write path hands the index after a commit, and what a rebuild or a
sync derives from the same files: one function per table (``episode_row``,
``event_row``, ``show_row``, ``claim_rows``) and the per-stage totals'
deltas. Nothing here imports SQLAlchemy (the write path's import stays light).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from ..ids import ID_PATTERN, VALID_IDS
from ..models import Episode
from ..pipeline import Pipeline, ready_for
from ..unique import claims

ISO = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso(moment: datetime) -> str:
    """The index's fixed-width UTC text form of a timestamp (sorts as time)."""
    return moment.astimezone(timezone.utc).strftime(ISO)


_ISO_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII).fullmatch
_from_iso_text = datetime.fromisoformat


def from_iso(text: str) -> datetime:
    """``iso``'s text as an aware UTC datetime. Its fixed form is read by ``fromisoformat``
    (about 50x faster than ``strptime``: a report reads thousands); other text is read, or
    refused, by ``strptime`` with ``ISO``, as before."""
    if _ISO_TEXT(text) is not None:
        return _from_iso_text(text)
    return datetime.strptime(text, ISO).replace(tzinfo=timezone.utc)


UNLISTED = 2_147_483_647
"""The ``position`` of an episode its show.yaml does not order by hand: after
the hand-set ones (0, 1, ...), the unlisted follow by ``created_at``, then id.
(One value for all of them, so a create or a delete renumbers nothing.)"""


def positions_of(order: Iterable[str]) -> dict[str, int]:
    """The ``position`` of each episode a show orders by hand (its first mention counts)."""
    return {ep: i for i, ep in enumerate(dict.fromkeys(order))}


RACY_NS = 2_000_000_000
"""A file checked less than this after its mtime may change again without
its mtime moving (coarse file-system timestamps): sync hashes it again."""

def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def pending_text(value: Mapping[str, Any] | None) -> str | None:
    """The ``pending`` column as the raw cursor writes it (JSON text; NULL when committed)."""
    return None if value is None else json_text(value)


def json_doc(value: Any) -> Any:
    """A JSON column as read through a raw cursor (text in SQLite)."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def time_text(text: Any, moment: datetime) -> str:
    # pydantic already wrote UTC times as text; only odd ones need formatting
    return text if isinstance(text, str) and len(text) == 27 and text[-1] == "Z" else iso(moment)


def episode_row(
    ep: Episode, data: Mapping[str, Any], pipeline: Pipeline, *, path: str, size: int, mtime_ns: int,
    sha256: str, checked_at_ns: int, position: int, pending: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The index row of an episode, from its model and ``data``, its
    ``model_dump(mode="json")`` (not copied: the caller hands it over).
    ``pending``: the file holds a hand edit not committed yet (``ep`` is the
    committed version): ``{"fields": [...]}``, or ``{"fields": None, "error": ...}``."""
    return {
        "show_id": ep.show_id,
        "episode_id": ep.episode_id,
        "title": ep.title,
        "stage": ep.stage,
        "version": ep.version,
        "created_at": time_text(data.get("created_at"), ep.created_at),
        "updated_at": time_text(data.get("updated_at"), ep.updated_at),
        "cost_total": ep.cost_total,
        "attempts_total": ep.attempts_total,
        "error_count": len(ep.error_history),
        "path": path,
        "position": position,
        "stage_entered_at": time_text(data.get("stage_entered_at"), ep.stage_entered_at),
        "previous_stage": ep.previous_stage,
        "ready_for": ready_for(pipeline, ep.stage, ep.previous_stage, ep.approvals, done=ep.stage_done,
                               hold=ep.hold),
        "message": ep.message,
        "costs": ep.costs,
        "data": data,
        "file_size": size,
        "file_mtime_ns": mtime_ns,
        "file_sha256": sha256,
        "checked_at_ns": checked_at_ns,
        "file_stamp": f"{ep.episode_id}|{size}|{mtime_ns}" if checked_at_ns - mtime_ns >= RACY_NS else None,
        "lease_owner": ep.lease.owner if ep.lease is not None else None,
        "lease_expires_at": iso(ep.lease.expires_at) if ep.lease is not None else None,
        "due_at": iso(ep.due_at) if ep.due_at is not None else None,
        "priority": ep.priority,
        "pending": pending,
    }


def dumped_row(
    data: Mapping[str, Any], pipeline: Pipeline, *, path: str, size: int, mtime_ns: int, sha256: str,
    checked_at_ns: int, position: int | None, pending: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``episode_row(model, data, ...)`` from ``data`` alone, for data in the form ``model_dump``
    writes (``parsing.dumped_episode``: no model built; ``tests/test_parsing_fast`` holds them equal)."""
    lease, due = data["lease"], data["due_at"]
    episode_id, stage, previous = data["episode_id"], data["stage"], data["previous_stage"]
    return {
        "show_id": data["show_id"],
        "episode_id": episode_id,
        "title": data["title"],
        "stage": stage,
        "version": data["version"],
        "created_at": _dumped_time(data["created_at"]),
        "updated_at": _dumped_time(data["updated_at"]),
        "cost_total": data["cost_total"],
        "attempts_total": sum(data["attempts"].values()),
        "error_count": len(data["error_history"]),
        "path": path,
        "position": position,
        "stage_entered_at": _dumped_time(data["stage_entered_at"]),
        "previous_stage": previous,
        "ready_for": ready_for(pipeline, stage, previous, data["approvals"], done=data["stage_done"],
                               hold=data["hold"]),
        "message": data["message"],
        "costs": data["costs"],
        "data": data,
        "file_size": size,
        "file_mtime_ns": mtime_ns,
        "file_sha256": sha256,
        "checked_at_ns": checked_at_ns,
        "file_stamp": f"{episode_id}|{size}|{mtime_ns}" if checked_at_ns - mtime_ns >= RACY_NS else None,
        "lease_owner": lease["owner"] if lease is not None else None,
        "lease_expires_at": iso(_from_text(lease["expires_at"])) if lease is not None else None,
        "due_at": iso(_from_text(due)) if due is not None else None,
        "priority": data.get("priority", 0),
        "pending": pending,
    }


def _dumped_time(text: str) -> str:
    """``time_text`` of a time as ``model_dump`` writes one in UTC (``...Z``; no fraction when it is 0)."""
    return text if len(text) == 27 else iso(_from_text(text))


_from_text = datetime.fromisoformat


def spent_in(event: Mapping[str, Any], stage_before: str | None) -> str | None:
    """The stage an event's cost was spent in; None for an event without a cost.

    Its ``stage``; for a line written before events carried one: the stage
    an advance left, a checkpoint's stage, else ``stage_before``, the stage
    the episode was at (a run's ``cost`` event: the run's stage)."""
    if event.get("cost") is None:
        return None
    for key in ("stage", "from_stage", "checkpoint"):
        value = event.get(key)  # (an id seen valid matches the pattern: ``VALID_IDS``, without the call)
        if (type(value) is str and value in VALID_IDS) or (isinstance(value, str) and ID_PATTERN.fullmatch(value)):
            return value
    return stage_before


def event_time(at: Any) -> str:
    """An event's ``at`` as the index's text (``ValueError`` if it is not a time)."""
    if isinstance(at, datetime):
        return iso(at)
    if isinstance(at, str) and len(at) == 27 and at[-1] == "Z":
        return at
    return iso(datetime.fromisoformat(str(at).replace("Z", "+00:00")))


LEDGER_BULK = ("doc", "patch")
"""What an event line carries for the ledger (the whole data, the change to it): kept in
events.jsonl only; the index's ``events.data`` holds the rest of the line. (They were most
of a rebuild's insert and of the index's size: 86 MB for 10k episodes of 5 events.)"""


def lean(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event line as the index's ``events.data`` holds it (without ``LEDGER_BULK``)."""
    data = dict(event)  # a copy in C, then the two keys dropped (not a comprehension over every key)
    if "doc" in data or "patch" in data:
        data.pop("doc", None)
        data.pop("patch", None)
    return data


def event_row(event: Mapping[str, Any], stage_before: str | None = None) -> dict[str, Any]:
    """The index row of one event line (as read from events.jsonl).
    ``stage_before``: where the episode was before it (see ``spent_in``)."""
    return {
        "show_id": event["show_id"],
        "episode_id": event["episode_id"],
        "version": event["version"],
        "at": event_time(event["at"]),
        "kind": event["kind"],
        "from_stage": event.get("from_stage"),
        "to_stage": event.get("to_stage"),
        "message": event.get("message"),
        "cost": event.get("cost"),
        "data": lean(event),
        "stage": spent_in(event, stage_before),
    }


def event_rows_of(lines: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The index rows of an episode's log lines, oldest first, following the
    episode's stage through them (for old lines whose cost names no stage)."""
    rows = []
    stage: str | None = None
    for line in lines:
        rows.append(event_row(line, stage))
        moved = line.get("to_stage")
        if isinstance(moved, str) and moved:
            stage = moved
    return rows


EVENT_COLUMNS = ("show_id", "episode_id", "version", "at", "kind", "from_stage", "to_stage", "message", "cost",
                 "data", "stage")
"""The events columns a rebuild inserts, in the order of ``event_values``' tuples (all but ``id``)."""


def event_values(lines: Iterable[Mapping[str, Any]], show: str, ep: str) -> list[tuple[Any, ...]]:
    """``event_rows_of(lines)`` as tuples in ``EVENT_COLUMNS`` order, ``data`` as JSON
    text, ``show_id``/``episode_id`` those of the log's folder (a rebuild's bulk insert:
    no dict per row, no copy of the event; ``tests/test_index_rows`` holds them equal)."""
    out = []
    append = out.append
    dumps = orjson.dumps
    for line, at, moved, cost, spent in derived(lines):
        if "doc" in line or "patch" in line:  # ``lean``: a copy without them (a C copy, not a comprehension)
            data = line.copy()
            data.pop("doc", None)
            data.pop("patch", None)
        else:
            data = line
        append((show, ep, line["version"], at, line["kind"], line.get("from_stage"), moved, line.get("message"),
                cost, dumps(data).decode(), spent))
    return out


def derived(lines: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], str, Any, Any, str | None]]:
    """Each of a log's lines with the columns its events row derives from it (not copied
    as they are): ``at`` as stored text, ``to_stage``, ``cost``, and the stage the money was
    spent in (``spent_in``, from the stage the lines before left the episode in). What a
    rebuild inserts (``event_values``) and verify compares (``index/verify:event_keys``).
    ``ValueError``: a time that is not one."""
    stage: str | None = None
    for line in lines:
        at = line["at"]
        if not (type(at) is str and len(at) == 27 and at[-1] == "Z"):
            at = event_time(at)
        cost = line.get("cost")
        moved = line.get("to_stage")
        yield line, at, moved, cost, None if cost is None else spent_in(line, stage)
        if isinstance(moved, str) and moved:
            stage = moved


def show_row(data: Mapping[str, Any], *, path: str, size: int, mtime_ns: int, sha256: str,
             checked_at_ns: int) -> dict[str, Any]:
    def moment(value: Any) -> str | None:
        return iso(datetime.fromisoformat(str(value).replace("Z", "+00:00"))) if value else None

    return {
        "show_id": data["show_id"], "title": data.get("title", ""), "created_at": moment(data.get("created_at")),
        "updated_at": moment(data.get("updated_at")), "path": path, "data": dict(data), "file_size": size,
        "file_mtime_ns": mtime_ns, "file_sha256": sha256, "checked_at_ns": checked_at_ns,
    }


def claim_rows(keys: Sequence[str], show: str, ep: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``unique_values`` rows of an episode whose file data is ``data``."""
    return [{"key": c.key, "value_sha256": c.sha256, "show_id": show, "episode_id": ep}
            for c in claims(keys, data.get("metadata"))]


def totals_delta(
    deltas: dict[tuple[str, str], list[float]], show: str, old: tuple[str, Mapping[str, float]] | None,
    new: tuple[str, Mapping[str, float]] | None,
) -> None:
    """Add to ``deltas`` what replacing an episode's (stage, costs) does to
    the per-stage totals of its show."""
    for sign, state in ((-1, old), (1, new)):
        if state is None:
            continue
        stage, costs = state
        deltas[(show, stage)][0] += sign
        for cost_stage, amount in costs.items():
            deltas[(show, cost_stage)][1] += sign * amount
