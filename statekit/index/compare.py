"""What a full ``verify`` compares, in its fast forms: an episode's index row and its replayed
data with the file's data (as orjson writes them, else ``codecs.same``), the index's events with
the columns its log gives them (``event_keys``).
``tests/test_verify_fast.py`` holds each fast form to its plain one.
"""

from __future__ import annotations

from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import String, select, type_coerce

from ..codecs import same
from ..errors import CorruptFileError
from .rows import event_time, iso, json_doc, spent_in
from .tables import events

# --- an episode's data --------------------------------------------------------------------


def row_same(stored: Any, data: dict[str, Any], text: bytes | None = None) -> bool:
    """``same(json_doc(stored), data)``: first whether the row's stored text is ``data`` as orjson
    writes it (what the index stores), which is the same data, since a checked model holds
    no value orjson writes lossily (non-finite floats, integers past 64 bits: ``models``).
    ``text``: ``text_of(data)``, if made."""
    if isinstance(stored, str):
        try:
            if (text if text is not None else orjson.dumps(data)) == stored.encode():
                return True
        except (TypeError, UnicodeEncodeError):
            pass
    return same(json_doc(stored), data)


def text_of(data: dict[str, Any]) -> bytes | None:
    """orjson's writing of a model's data (None: it cannot write it)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return None


def data_same(replayed: Any, data: dict[str, Any], text: bytes | None) -> bool:
    """``same(replayed, data)``; first whether orjson writes both alike (``text``: ``text_of(data)``):
    then they are the same (neither holds a value orjson writes lossily: ``data`` is a checked
    model's, ``replayed`` was read from a log, where no reading takes a non-finite number)."""
    if text is not None:
        try:
            if orjson.dumps(replayed) == text:
                return True
        except TypeError:
            pass
    return same(replayed, data)


class Dumped:
    """What ``_check`` reads of an episode's model, read from its data in the form the model writes
    (``parsing.dumped_episode``: the model would hold these same values), without building the model.
    Each field is an attribute of its own (the data's keys are the model's fields, ``priority`` left
    out when it is 0): a field is read as fast as a model's, not through ``__getattr__``, which Python
    calls only after a failed lookup has made its ``AttributeError`` (2 us each, 11 reads an episode)."""

    priority = 0  # (the one field the form leaves out: when it is 0)

    def __init__(self, data: dict[str, Any]) -> None:
        vars(self).update(data)
        self._data = data  # (no field's name starts with "_")

    @property
    def key(self) -> str:
        return f"{self.show_id}/{self.episode_id}"

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self._data


# --- an episode's events ------------------------------------------------------------------


EVENT_FIELDS = ("version", "at", "kind", "from_stage", "to_stage", "message", "cost", "stage")
"""The events columns verify compares with what the log says (``data`` is the line itself)."""


def event_keys(log_path: str, lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``event_key`` of the ``EVENT_FIELDS`` of each of a log's index rows (``index/scan:event_rows``),
    built without the rows, in one loop (``rows.derived``'s columns, without a generator's step and a
    tuple per line; ``tests/test_verify_fast.py`` holds them equal to the rows')."""
    out = []
    append = out.append
    stage: str | None = None
    try:
        for line in lines:
            at = line["at"]
            if not (type(at) is str and len(at) == 27 and at[-1] == "Z"):
                at = event_time(at)
            get = line.get
            cost, moved = get("cost"), get("to_stage")
            append((line["version"], at, line["kind"], get("from_stage"), moved, get("message"), cost,
                    None if cost is None else spent_in(line, stage)))
            if isinstance(moved, str) and moved:
                stage = moved
    except ValueError as exc:  # a damaged time: reported like any damaged line (as event_rows words it)
        raise CorruptFileError(f"{log_path}: an event's time is not an ISO timestamp ({exc})", path=log_path) from None
    return out


def event_columns(table: Any) -> list[Any]:
    """The compared columns; times as the stored text (a damaged time must not stop verify)."""
    return [type_coerce(table.c[name], String) if name == "at" else table.c[name] for name in EVENT_FIELDS]


def raw_rows(conn: Any, stmt: Any) -> list[tuple[Any, ...]]:
    """The rows of a plain SELECT through the driver's own cursor (SQLAlchemy's row
    processing costs more than the query on 300,000 rows); only for columns whose
    driver values are what SQLAlchemy would give (text, numbers; times go through ``event_key``)."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(str(stmt.compile(dialect=conn.dialect)))
        return cursor.fetchall()
    finally:
        cursor.close()


def events_by_episode(conn: Any) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Each episode's indexed events, oldest first, as ``event_key`` gives them."""
    rows = raw_rows(conn, select(events.c.show_id, events.c.episode_id, *event_columns(events)).order_by(
        events.c.show_id, events.c.episode_id, events.c.version))  # (the unique index's order: no sort)
    if conn.dialect.name == "sqlite":  # times are the stored text already
        return {key: [row[2:] for row in group] for key, group in groupby(rows, itemgetter(0, 1))}
    return {key: [event_key(row[2:]) for row in group] for key, group in groupby(rows, itemgetter(0, 1))}


def event_key(values: Any) -> tuple[Any, ...]:
    """An event row's compared columns, with times as text (SQLite and PostgreSQL alike)."""
    out = list(values)
    at = out[1]
    out[1] = iso(at) if isinstance(at, datetime) else at
    return tuple(out)
