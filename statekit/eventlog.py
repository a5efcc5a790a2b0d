"""The append-only event log (``events.jsonl``): one JSON line per committed write.

The uncommitted-tail rule: an append first drops what follows the last
committed event (a torn line, or the event of a write that crashed before
its file was replaced), so the log and the file never disagree for long.

A log retention compressed (``events.jsonl.gz``, ``packed``) is read as the
plain one by every function here (``_open_log``, ``read_lines``); an append or a
cut makes it plain again first, under the caller's episode lock.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError as PydanticValidationError

from . import packed, patches
from .codecs import MAX_DEPTH, compact_json, exact_json, has_long_number, int64, no_duplicates
from .errors import CorruptFileError, UnsafePathError
from .files import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, Disk, name_at, storage_error, unsafe_path, write_all
from .models import EVENT_SCHEMA, UNCHAINED_EVENT_SCHEMA, Event
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
        if strict:  # orjson's reading when it is exactly the strict one (codecs.exact_json), else the strict reader
            event = exact_json(line)
            if event is None:
                orjson.loads(line)  # what the fast parser refuses, both modes refuse
                event = json.loads(line, object_pairs_hook=no_duplicates, parse_int=int64)
        else:
            event = orjson.loads(line)
    except (ValueError, RecursionError):
        return None
    if type(event) is not dict:
        return event if isinstance(event, dict) and _typed(event) else None
    return event if _typed(event) else None


_str = str
_NONE_OR_STR = frozenset((type(None), str))
_NONE_OR_NUMBER = frozenset((type(None), int, float))


def _typed(event: dict[str, Any]) -> bool:
    """Every field the index stores in a typed column has its JSON type (``_EVENT_TEXT``
    text, ``_EVENT_OPTIONAL_TEXT`` text or absent/null, ``version`` an integer, ``cost`` a
    number or absent/null). Written out, not looped: it runs for every line a rebuild reads."""
    get = event.get
    return (type(get("version")) is int and type(get("at")) is _str and type(get("kind")) is _str
            and type(get("show_id")) is _str and type(get("episode_id")) is _str
            and type(get("from_stage")) in _NONE_OR_STR and type(get("to_stage")) in _NONE_OR_STR
            and type(get("message")) in _NONE_OR_STR and type(get("sha256")) in _NONE_OR_STR
            and type(get("stage")) in _NONE_OR_STR and type(get("cost")) in _NONE_OR_NUMBER)


def _committed_end(pread: Callable[[int, int], bytes], size: int, committed: int, path: str) -> int:
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
        data = pread(end - start, start)
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
                 dir_fd: int | None = None, committed_end: int | None = None) -> tuple[int, int]:
    """Append one event line durably, first dropping any uncommitted tail.

    ``committed`` is the version the episode file holds now; the new event
    carries ``committed + 1`` and becomes committed once the file is renamed.
    ``known_size``: the log's size right after this process committed the
    file's current version; if the log still has that size it has no tail
    to look for; ``committed_end``: where the committed events end, when the
    caller found it (``read_tail``): the rest is cut. Returns the log's size before and after (a size of 0 before
    means a new log, whose directory entry needs an fsync). ``dir_fd``: its
    folder, held open. ``write_event`` then ``Appended.sync``.
    """
    appended = write_event(disk, path, line, committed, known_size, dir_fd=dir_fd, committed_end=committed_end)
    appended.sync()
    return appended.before, appended.after


class Appended:
    """An event line written to its log (``write_event``) but not yet durable: ``sync``
    makes it so (on any thread: a write hands it to a helper, to overlap the file's own
    fsync) and closes the log; ``close`` only closes it (the write stopped first).
    ``before``/``after``: the log's size before the append and after it."""

    __slots__ = ("disk", "path", "fd", "keep", "before", "after")

    def __init__(self, disk: Disk, path: str, fd: int, keep: int, before: int, after: int) -> None:
        self.disk, self.path, self.fd, self.keep, self.before, self.after = disk, path, fd, keep, before, after

    def sync(self) -> None:
        """fsync the log and close it; on failure the line is cut again (best effort) and
        ``StorageError`` raised."""
        fd = self.fd
        if fd is None:
            raise RuntimeError(f"{self.path}: the append was closed already")
        self.fd = None
        try:
            self.disk.fsync(fd)
        except OSError as exc:
            _cut(fd, self.keep)
            raise storage_error(exc, self.path, "append to") from exc
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the log if ``sync`` did not (the write stopped first: the line left is an
        uncommitted tail, dropped by the next write)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _cut(fd: int, size: int) -> None:
    try:  # best effort: a failed append leaves no partial line behind
        os.ftruncate(fd, size)
    except OSError:
        pass


def write_event(disk: Disk, path: str, line: bytes, committed: int, known_size: int | None = None, *,
                dir_fd: int | None = None, committed_end: int | None = None, new: bool = False) -> Appended:
    """``append_event`` up to its fsync: the uncommitted tail dropped, the line written,
    the log left open; the caller calls ``sync`` (or ``close``) on what it returns. ``new``:
    the log is not expected to be there (a folder the caller just made): made at once."""
    try:
        fd = None
        if new:
            try:
                fd = disk.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o666,
                               dir_fd=dir_fd)
            except FileExistsError:
                pass  # there after all: looked at as any log
        if fd is None:
            try:
                fd = disk.open(path, os.O_RDWR | os.O_APPEND | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:  # a new log, or one retention compressed: a write makes it plain again
                packed.inflate(disk, path, dir_fd=dir_fd)
                fd = disk.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666,
                               dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_path(path) from None
        raise storage_error(exc, path, "open") from exc
    keep = None
    try:
        st = os.fstat(fd)
        if st.st_nlink > 1:  # another name would change with it: never written through
            raise UnsafePathError(
                f"{path}: has {st.st_nlink} names (hard links); statekit does not append through one",
                path=path, hint="replace the other names with copies (cp), then write again; nothing was written")
        size = st.st_size
        if committed_end is not None and committed_end <= size:  # the caller read the tail already
            keep = committed_end
        else:
            keep = size if size == known_size else _committed_end(
                lambda n, at: os.pread(fd, n, at), size, committed, path) if size else 0
        if keep < size:
            disk.truncate(fd, keep)
        write_all(disk, fd, line)
    except BaseException as exc:
        if keep is not None:
            _cut(fd, keep)
        os.close(fd)
        if isinstance(exc, OSError):
            raise storage_error(exc, path, "append to") from exc
        raise
    return Appended(disk, path, fd, keep, size, keep + len(line))


def uncommitted_tail(path: str, committed: int, *, dir_fd: int | None = None) -> int:
    """How many bytes at the end of a log are not committed (a torn line, or
    the event of a write that stopped before its file was replaced); 0 if none.
    ``CorruptFileError`` if the log is damaged in a way that is not a tail."""
    opened = _open_log(path, dir_fd)
    if opened is None:
        return 0
    with opened:
        return opened.size - _committed_end(opened.pread, opened.size, committed, path) if opened.size else 0


class _Opened:
    """A log open to read: its size and ``pread(n, offset)``; a compressed log
    (``events.jsonl.gz``) is read whole, uncompressed, and served from memory."""

    def __init__(self, size: int, fd: int | None = None, data: bytes | None = None) -> None:
        self.size, self.fd, self.data = size, fd, data

    def pread(self, n: int, offset: int) -> bytes:
        if self.data is not None:
            return self.data[offset:offset + n]
        assert self.fd is not None
        return os.pread(self.fd, n, offset)

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_log(path: str, dir_fd: int | None) -> _Opened | None:
    """A log opened to read (never through a symlink, never blocking on a FIFO);
    its compressed form when only that exists (``packed``); None if there is none;
    ``CorruptFileError`` if it is not a regular file."""
    for _attempt in range(2):
        fd = _open_plain(path, dir_fd)
        if fd is not None:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise CorruptFileError(f"{path}: is not a regular file, expected an event log", path=path)
            return _Opened(st.st_size, fd=fd)
        data = packed.read_packed(path, dir_fd=dir_fd)
        if data is not None:
            return _Opened(len(data), data=data)
    return None  # (looked twice: an inflation renames the plain log in, then removes the .gz)


def _open_plain(path: str, dir_fd: int | None) -> int | None:
    try:
        return os.open(name_at(path, dir_fd), os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_path(path) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise CorruptFileError(f"{path}: is not a regular file, expected an event log", path=path) from None
        raise storage_error(exc, path, "read") from exc


def drop_tail(disk: Disk, path: str, size: int, *, dir_fd: int | None = None) -> None:
    """Cut a log back to ``size`` bytes, durably (a compressed log is made plain first)."""
    packed.inflate(disk, path, dir_fd=dir_fd)
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
    return _read(packed.read_either(path, None, dir_fd=dir_fd), path, committed, strict, False)


def read_lines(path: str, committed: int, *, strict: bool = True, dir_fd: int | None = None
               ) -> list[tuple[dict[str, Any], bytes]]:
    """``read_events``, each event with its line's bytes (newline included: what the chain hashes)."""
    return _read(packed.read_either(path, None, dir_fd=dir_fd), path, committed, strict,  # type: ignore[return-value]
                 True)


def lines_of(raw: bytes | None, path: str, committed: int, *, strict: bool = True) -> list[tuple[dict[str, Any], bytes]]:
    """``read_lines`` of a log's bytes already read (``verify`` reads each log once)."""
    return _read(raw, path, committed, strict, True)  # type: ignore[return-value]


def _read(raw: bytes | None, path: str, committed: int, strict: bool, with_raw: bool) -> list[Any]:
    """The committed lines of a log's bytes: each event with its line's bytes (``with_raw``),
    else the events alone (no line's bytes copied)."""
    if not raw:
        return []
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn append
    return _committed(((line, _parse_event_line(line, strict)) for line in lines), path, committed,
                      1 if with_raw else 0)


def _committed(parsed: Iterable[tuple[Any, dict[str, Any] | None]], path: str, committed: int,
               how: int) -> list[Any]:
    """The committed events of a log's lines, each with its event (None: not one): a damaged
    line before the tail raises ``CorruptFileError``; an uncommitted tail is left out. ``how``:
    0 the events, 1 each with its line and a newline, 2 each with what ``parsed`` paired it with."""
    out: list[Any] = []
    last = -1 << 63  # the version of the last event kept
    bad: int | None = None
    for number, (line, event) in enumerate(parsed, 1):
        if event is None:
            bad = bad or number
            continue
        version = event["version"]
        if version > committed:
            continue
        if bad is not None:
            raise CorruptFileError(f"{path}:{bad}: unreadable event line", path=path, line=bad)
        if out and version <= last:
            raise CorruptFileError(f"{path}:{number}: event version {version} comes after version "
                                   f"{last} (a repeated or misplaced line)", path=path, line=number)
        last = version
        out.append(event if not how else (event, line + b"\n") if how == 1 else (event, line))
    if bad is not None and committed and (not out or last < committed):
        raise CorruptFileError(f"{path}:{bad}: unreadable event line", path=path, line=bad)
    return out


@dataclass
class ParsedLog:
    """Every line of a log's bytes read once (``parse_log``): what ``lines_of`` and ``tail_of``
    give, without reading a line twice (``verify`` wants both of every log)."""

    lines: list[bytes]
    """The lines before the last newline, without their newlines."""
    events: list[dict[str, Any] | None]
    """Each line's event (None: not one), read strictly and by the fast parser alike."""
    hashes: dict[int, str] = field(default_factory=dict)
    """``line_hash`` of the lines hashed so far, by their index."""

    def committed(self, path: str, committed: int) -> list[tuple[dict[str, Any], bytes]]:
        """``lines_of(raw, path, committed)`` (strict): the same lines, the same errors."""
        return _committed(zip(self.lines, self.events), path, committed, 1)

    def hashed(self, path: str, committed: int) -> tuple[list[dict[str, Any]], list[str]]:
        """``committed``'s events, and the ``line_hash`` of each of their lines (the same errors):
        what ``chain_problems`` takes, no line copied, none hashed twice (``tail`` hashed the last two).
        The usual log (every line an event, versions going up by one to ``committed`` at most: all of
        its lines are committed, in order) is taken whole, without ``_committed``'s look at each line."""
        events = self.events
        if events and None not in events:
            versions = [event["version"] for event in events]
            first = versions[0]
            if versions[-1] <= committed and versions == list(range(first, first + len(versions))):
                if not self.hashes:
                    sha256 = hashlib.sha256
                    return events[:], [sha256(line).hexdigest() for line in self.lines]
                return events[:], [self.hash(i) for i in range(len(events))]
        found = _committed(zip(range(len(events)), events), path, committed, 2)
        return [event for event, _i in found], [self.hash(i) for _event, i in found]

    def hash(self, i: int) -> str:
        """``line_hash`` of line ``i``."""
        known = self.hashes.get(i)
        if known is None:
            known = self.hashes[i] = hashlib.sha256(self.lines[i]).hexdigest()
        return known

    def last_event(self) -> dict[str, Any] | None:
        """The event of ``tail``'s last line, found without hashing a line."""
        return next((event for event in reversed(self.events) if event is not None), None)

    def tail(self) -> tuple[TailLine | None, TailLine | None]:
        """``tail_of(raw)``: the last two readable lines (last, the one before)."""
        found: list[TailLine] = []
        end = sum(map(len, self.lines)) + len(self.lines)
        lines, events = self.lines, self.events
        for i in range(len(lines) - 1, -1, -1):
            event = events[i]
            if event is not None:
                found.append(TailLine(event, self.hash(i), end))
                if len(found) == 2:
                    break
            end -= len(lines[i]) + 1
        return (found[0] if found else None), (found[1] if len(found) > 1 else None)


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
"""A JSON text (of lines every one of which orjson read: none spans a line)."""


def parse_log(raw: bytes | None) -> ParsedLog | None:
    """A log's bytes read once for both ``lines_of`` (strict) and ``tail_of`` (the fast parser):
    when orjson's reading of every line is exactly the strict one (``codecs.exact_json``'s
    rules, judged over the whole log at once: no line nested past the limit, every line an object,
    and either each line is orjson's own writing of what it read (as statekit writes them: then no
    duplicate key, no escape either reader takes otherwise, and if every integer is below 2**53, none
    past 64 bits), or no ``\\u`` escape, as many colons written back as read (no duplicate key) and no
    19-digit number outside a text), both read each line alike. None when that is not so (then
    ``lines_of`` and ``tail_of`` read it, each its own way)."""
    if not raw:
        return ParsedLog([], [])
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn append
    loads = orjson.loads
    read: list[Any] = []
    try:
        for line in lines:  # (a line of MAX_DEPTH bytes or fewer cannot be nested past it; each byte counted once)
            if len(line) > MAX_DEPTH and line.count(b"[") + line.count(b"{") > MAX_DEPTH:
                return None
            event = loads(line)
            if type(event) is not dict:
                return None
            read.append(event)
    except orjson.JSONDecodeError:
        return None
    body = raw if raw[-1:] == b"\n" else raw[:raw.rfind(b"\n") + 1]
    try:  # (in one call: whether every integer is below 2**53, then no integer can pass 64 bits)
        written, small = orjson.dumps(read, option=orjson.OPT_STRICT_INTEGER), True
    except TypeError:
        written, small = orjson.dumps(read), False
    joined = b",".join(lines)
    # each line orjson's writing of its reading: the lines and the written array's items begin alike, and a
    # JSON object ends where it ends (its text from its first brace on is one), so line by line they are equal
    own = len(written) == len(joined) + 2 and written.startswith(joined, 1)
    if not own and (b"\\u" in body or written.count(b":") != body.count(b":")):
        return None  # an escape (one may spell a colon), or a duplicate key (orjson kept one of the pair)
    if not (own and small) and has_long_number(body) and has_long_number(_STRINGS.sub(b"", body)):
        return None  # a number of 19 digits (a run of digits inside a text, such as a hash, is no number)
    return ParsedLog(lines, [event if _typed(event) else None for event in read])


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
        if raw.get("schema_version", EVENT_SCHEMA) not in (UNCHAINED_EVENT_SCHEMA, EVENT_SCHEMA):
            schema_of(raw, f"{path} (event {number})", current=EVENT_SCHEMA, legacy_ok=False)
        try:
            events.append(Event.model_validate(raw))
        except PydanticValidationError as exc:
            raise CorruptFileError(f"{path}: event {number} is not a valid event: {exc.errors()[0]['msg']}",
                                   path=path) from None
    return events


_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
"""The time every statekit event line carries (``rows.event_time``'s text)."""


def events_valid(lines: list[dict[str, Any]]) -> bool:
    """True only if ``validate_events`` passes every line, judged without building the models
    (False: it may not; ``validate_events`` then decides and words the error). For lines as read
    (``read_lines``: their indexed fields already of their JSON types, ``_typed``): what is
    left of ``Event`` is ``schema_version`` (absent, or an integer of a schema read here),
    ``at`` (a time in statekit's own form, a real date) and ``fields`` (absent, null or a list
    of texts); any other key is allowed."""
    fromisoformat = datetime.fromisoformat
    for event in lines:
        version = event.get("schema_version", EVENT_SCHEMA)
        if type(version) is not int or version not in (UNCHAINED_EVENT_SCHEMA, EVENT_SCHEMA):
            return False
        fields = event.get("fields")
        if fields is not None and (type(fields) is not list or any(type(f) is not str for f in fields)):
            return False
        at = event["at"]
        if len(at) != 27 or not _AT.fullmatch(at):
            return False
        try:
            fromisoformat(at)
        except ValueError:
            return False
    return True


# --- the ledger: a hash chain, and patches that rebuild every version ------------------


CHAIN_KEYS = ("prev", "doc")
"""A line carrying one of these belongs to a chained log (schema 2, ``docs/ARCHITECTURE.md``)."""


def line_hash(line: bytes) -> str:
    """The hash the next line's ``prev`` names: sha256 of the line's bytes, without its newline."""
    return hashlib.sha256(line[:-1] if line.endswith(b"\n") else line).hexdigest()


def is_chained(event: dict[str, Any]) -> bool:
    return "prev" in event or "doc" in event  # (CHAIN_KEYS, written out: no generator per line)


@dataclass
class TailLine:
    """One of the last lines of a log: the event, its hash, and the offset just past it."""

    event: dict[str, Any]
    hash: str
    end: int


def read_tail(path: str, *, dir_fd: int | None = None, block: int = 8192) -> tuple[TailLine | None, TailLine | None]:
    """The last two complete, readable event lines of a log (last, the one before), reading
    only the log's end; a torn last line (no newline) or damaged lines at the end are skipped."""
    opened = _open_log(path, dir_fd)
    if opened is None:
        return None, None
    size = opened.size
    with opened:
        while True:
            start = max(0, size - block)
            found = _tail_in(opened.pread(size - start, start), start)
            if len(found) == 2 or start == 0:
                return (found[0] if found else None), (found[1] if len(found) > 1 else None)
            block *= 4


def tail_of(raw: bytes | None) -> tuple[TailLine | None, TailLine | None]:
    """``read_tail`` of a log's bytes already read."""
    found = _tail_in(raw or b"", 0)
    return (found[0] if found else None), (found[1] if len(found) > 1 else None)


def _tail_in(data: bytes, start: int) -> list[TailLine]:
    """The last two readable lines of ``data`` (read from offset ``start`` of the log), last first;
    fewer when a line begins before ``data`` (then the caller reads more)."""
    found: list[TailLine] = []
    end = start + data.rfind(b"\n") + 1 if b"\n" in data else start
    cursor = end - start
    while cursor > 0 and len(found) < 2:
        begin = data.rfind(b"\n", 0, cursor - 1) + 1
        if begin == 0 and start > 0:
            break  # this line starts before the block: read more
        raw = data[begin:cursor]
        event = _parse_event_line(raw[:-1], strict=False)
        if event is not None:
            found.append(TailLine(event, line_hash(raw), start + cursor))
        cursor = begin
    return found


def committing(last: dict[str, Any], before: dict[str, Any] | None, sha: str, file_version: int,
               seen: Callable[[], int | None]) -> tuple[int, bool]:
    """The one rule for committed vs pending, given a chained log's last two events and
    the episode file's hash and ``version``: (0 if the last line commits, 1 if the one
    before does; whether the file is a pending hand edit). A last line whose write
    stopped before its rename (the file is still the one before, or a hand edit of it)
    is not committed, unless the index saw its version (``seen()``: then a person
    lowered ``version`` by hand, and the line stands)."""
    if last.get("sha256") == sha:
        return 0, False
    if before is not None and last["version"] == before["version"] + 1:
        if before.get("sha256") == sha:
            return 1, False
        if file_version == before["version"]:
            indexed = seen()
            if indexed is None or indexed < last["version"]:
                return 1, True
    return 0, True


def replay(lines: list[dict[str, Any]], upto: int | None = None, path: str = "events.jsonl", *,
           last_only: bool = False, consume: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """Every version's data a chained log rebuilds, oldest first: (version, data),
    from its last ``doc`` on (a seal starts the chain over). ``upto``: stop after that
    version. ``last_only``: only the last version (patched in place: linear in the
    log, where keeping every version copies the document once per event).
    ``consume`` (with ``last_only``): the caller has no further use for the lines' ``doc``
    and patch values, which become parts of the data instead of being copied (they may change).
    ``CorruptFileError`` (naming ``path``, the log) if a patch does not apply."""
    start = max((i for i, e in enumerate(lines) if "doc" in e), default=None)
    if start is None:
        return []
    out: list[tuple[int, dict[str, Any]]] = []
    data: dict[str, Any] | None = None
    for event in lines[start:]:
        if upto is not None and event["version"] > upto:
            break
        if "doc" in event:
            if not isinstance(event["doc"], dict):
                raise CorruptFileError(f"{path}: version {event['version']}: doc is not an object", path=path)
            data = event["doc"] if consume and last_only else copy.deepcopy(event["doc"])
        else:
            try:
                data = patches.apply(data or {}, event.get("patch", []), in_place=last_only and data is not None,
                                     copy_values=not (consume and last_only))
            except patches.PatchError as exc:
                raise CorruptFileError(f"{path}: version {event['version']}: the patch does not apply ({exc})",
                                       path=path) from None
        out.append((event["version"], data))
    return out[-1:] if last_only else out


def chain_problems(path: str, lines: list[dict[str, Any]], raws: list[bytes] | None = None, *,
                   hashes: list[str] | None = None) -> list[str]:
    """What is wrong with a log's chain: a ``prev`` that is not the hash of the line
    before, versions that do not go up by one, a move that does not start where the
    last one ended. Checked from the first chained line on (older lines predate it).
    ``raws``: the lines' bytes; or ``hashes``: their ``line_hash`` already made."""
    problems: list[str] = []
    first = next((i for i, e in enumerate(lines) if is_chained(e)), None)
    if first is None:
        return problems
    stage: str | None = None
    for i, event in enumerate(lines):
        moved_to = event.get("to_stage")
        if i >= first:
            if i > first or "prev" in event:
                expected = None if i == 0 else hashes[i - 1] if hashes is not None \
                    else line_hash(raws[i - 1])  # type: ignore[index]
                if event.get("prev") != expected:
                    problems.append(f"{path}:{i + 1}: the hash chain is broken (prev does not match line {i}): "
                                    "an earlier line was changed, removed or inserted")
            if event.get("schema_version") != EVENT_SCHEMA:  # a chained log's lines are all chained events
                problems.append(f"{path}:{i + 1}: schema_version {event.get('schema_version')!r} in a chained log "
                                f"(every line from the first chained one on is schema {EVENT_SCHEMA})")
            if i > first and event["version"] != lines[i - 1]["version"] + 1:
                problems.append(f"{path}:{i + 1}: version {event['version']} follows version "
                                f"{lines[i - 1]['version']} (versions must go up by one)")
            frm = event.get("from_stage")
            if frm is not None and stage is not None and frm != stage:
                problems.append(f"{path}:{i + 1}: a move from {frm!r}, but the episode was at {stage!r}")
        if isinstance(moved_to, str) and moved_to:
            stage = moved_to
        elif "doc" in event and isinstance(event["doc"], dict) and isinstance(event["doc"].get("stage"), str):
            stage = event["doc"]["stage"]
    return problems


@dataclass
class Ledger:
    """What an episode's chained log says is committed (``Writer.ledger_of``)."""

    version: int
    """The committed version (0: no event yet)."""
    line_hash: str | None
    """The hash of the committing line: the next line's ``prev``."""
    end: int
    """The log's offset just past the committing line (an uncommitted tail lies beyond)."""
    pending: bool
    """The file's bytes are not what the committing line says: a person's edit, not adopted yet."""
    data: dict[str, Any] | None = None
    """The committed version's data, when known without replaying the log."""
