"""The append-only event log (``events.jsonl``): one JSON line per committed write.

The uncommitted-tail rule: an append first drops what follows the last
committed event (a torn line, or the event of a write that crashed before
its file was replaced), so the log and the file never disagree for long.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

import orjson
from pydantic import ValidationError as PydanticValidationError

from .codecs import compact_json, int64, no_duplicates
from .errors import CorruptFileError
from .files import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, Disk, name_at, read_file, storage_error, unsafe_path, write_all
from .models import EVENT_SCHEMA, Event
from .schema import schema_of

_EVENT_TEXT = ("at", "kind", "show_id", "episode_id")
_EVENT_OPTIONAL_TEXT = ("from_stage", "to_stage", "message", "sha256", "stage")


def _parse_event_line(line: bytes, strict: bool = True) -> dict[str, Any] | None:
    """One event line, or None if it is not one. Both modes refuse what the
    fast parser refuses (NaN, infinity, numbers out of range, a BOM) and
    fields of the wrong JSON type (the index stores them in typed columns);
    ``strict`` also refuses duplicate keys and integers beyond 64 bits (which
    the fast parser reads as floats), and returns the exact reading."""
    try:
        event = orjson.loads(line)
        if strict:
            event = json.loads(line, object_pairs_hook=no_duplicates, parse_int=int64)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or type(event.get("version")) is not int:
        return None
    get = event.get
    if not all(type(get(k)) is str for k in _EVENT_TEXT) or not all(
            type(get(k)) in (str, type(None)) for k in _EVENT_OPTIONAL_TEXT) or type(get("cost")) not in (
            int, float, type(None)):
        return None
    return event


def _committed_end(fd: int, size: int, committed: int, path: str) -> int:
    """Offset just past the last committed event; everything after is an
    uncommitted tail (a torn line, or the one event of a write that crashed
    before its file was replaced). Each write drops the tail before it
    appends, so a tail holds at most one event: more events beyond the file's
    version mean the file went back (edited by hand, or restored), and then
    nothing is dropped."""
    end = size
    block = 8192
    garbage = False
    beyond = 0
    while end > 0:
        start = max(0, end - block)
        data = os.pread(fd, end - start, start)
        if not data.endswith(b"\n"):  # a torn append: never committed
            cut = data.rfind(b"\n")
            if cut < 0 and start > 0:
                block *= 2
                continue
            end = start + cut + 1
            continue
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut < 0 and start > 0:
            block *= 2
            continue
        line_start = start + cut + 1
        event = _parse_event_line(data[cut + 1 :], strict=False)
        if event is None or event["version"] > committed:
            garbage = garbage or event is None
            if event is not None and (event["version"] > committed + 1 or beyond):
                raise CorruptFileError(
                    f"{path}: the log has events beyond version {committed + 1} while the episode file is at "
                    f"version {committed} (was 'version' edited by hand, or the file restored from an old copy?)",
                    path=path, hint="run 'statekit sync' to adopt the file as it is; no event was dropped",
                )
            beyond += event is not None
            end = line_start
            continue
        if garbage and event["version"] < committed:
            raise CorruptFileError(
                f"{path}: unreadable events after version {event['version']} (the file is at {committed})",
                path=path, hint="run 'statekit repair' or restore events.jsonl from a backup",
            )
        return end
    return 0


def append_event(disk: Disk, path: str, line: bytes, committed: int, known_size: int | None = None, *,
                 dir_fd: int | None = None) -> tuple[int, int]:
    """Append one event line durably, first dropping any uncommitted tail.

    ``committed`` is the version the episode file holds now; the new event
    carries ``committed + 1`` and becomes committed once the file is renamed.
    ``known_size``: the log's size right after this process committed the
    file's current version; if the log still has that size it has no tail
    to look for. Returns the log's size before and after (a size of 0 before
    means a new log, whose directory entry needs an fsync). ``dir_fd``: its
    folder, held open.
    """
    try:
        fd = disk.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_path(path) from None
        raise storage_error(exc, path, "open") from exc
    keep = None
    try:
        size = os.fstat(fd).st_size
        keep = size if size == known_size else _committed_end(fd, size, committed, path) if size else 0
        if keep < size:
            disk.truncate(fd, keep)
        write_all(disk, fd, line)
        disk.fsync(fd)
        return size, keep + len(line)
    except OSError as exc:
        if keep is not None:
            try:  # best effort: a failed append leaves no partial line behind
                os.ftruncate(fd, keep)
            except OSError:
                pass
        raise storage_error(exc, path, "append to") from exc
    finally:
        os.close(fd)


def uncommitted_tail(path: str, committed: int, *, dir_fd: int | None = None) -> int:
    """How many bytes at the end of a log are not committed (a torn line, or
    the event of a write that stopped before its file was replaced); 0 if none.
    ``CorruptFileError`` if the log is damaged in a way that is not a tail."""
    try:
        fd = os.open(name_at(path, dir_fd), os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_path(path) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise CorruptFileError(f"{path}: is not a regular file, expected an event log", path=path) from None
        raise storage_error(exc, path, "read") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(f"{path}: is not a regular file, expected an event log", path=path)
        size = st.st_size
        return size - _committed_end(fd, size, committed, path) if size else 0
    finally:
        os.close(fd)


def drop_tail(disk: Disk, path: str, size: int, *, dir_fd: int | None = None) -> None:
    """Cut a log back to ``size`` bytes, durably."""
    try:
        fd = disk.open(path, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise storage_error(exc, path, "open") from exc
    try:
        disk.truncate(fd, size)
        disk.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, path, "truncate") from exc
    finally:
        os.close(fd)


def read_events(path: str, committed: int, *, strict: bool = True, dir_fd: int | None = None) -> list[dict[str, Any]]:
    """The committed events of a log, oldest first (the uncommitted tail is
    never shown). A damaged line before the tail raises ``CorruptFileError``.
    ``strict=False`` reads with the fastest parser, which does not look for
    duplicate keys (rebuilding the index; ``verify`` reads strictly)."""
    raw = read_file(path, limit=None, dir_fd=dir_fd)  # a log grows with the episode's history
    if not raw:
        return []
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn append
    events: list[dict[str, Any]] = []
    bad: int | None = None
    for number, line in enumerate(lines, 1):
        event = _parse_event_line(line, strict)
        if event is None:
            bad = bad or number
            continue
        if event["version"] > committed:
            continue
        if bad is not None:
            raise CorruptFileError(f"{path}:{bad}: unreadable event line", path=path, line=bad)
        if events and event["version"] <= events[-1]["version"]:
            raise CorruptFileError(f"{path}:{number}: event version {event['version']} comes after version "
                                   f"{events[-1]['version']} (a repeated or misplaced line)", path=path, line=number)
        events.append(event)
    if bad is not None and committed and (not events or events[-1]["version"] < committed):
        raise CorruptFileError(f"{path}:{bad}: unreadable event line", path=path, line=bad)
    return events


def last_logged_version(path: str, *, dir_fd: int | None = None) -> int:
    """The highest version in a log (0 for none), committed or not."""
    return max((e["version"] for e in read_events(path, 1 << 62, dir_fd=dir_fd)), default=0)


def event_line(event: dict[str, Any]) -> bytes:
    return compact_json(event) + b"\n"


def validate_events(path: str, lines: list[dict[str, Any]]) -> list[Event]:
    """The events of a log's lines (``events`` and ``verify`` check them alike):
    ``SchemaVersionError`` for a line of another schema, ``CorruptFileError``
    for one that is not a valid event."""
    events = []
    for number, raw in enumerate(lines, 1):
        if raw.get("schema_version", EVENT_SCHEMA) != EVENT_SCHEMA:
            schema_of(raw, f"{path} (event {number})", current=EVENT_SCHEMA, legacy_ok=False)
        try:
            events.append(Event.model_validate(raw))
        except PydanticValidationError as exc:
            raise CorruptFileError(f"{path}: event {number} is not a valid event: {exc.errors()[0]['msg']}",
                                   path=path) from None
    return events
