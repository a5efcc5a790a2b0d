"""Reading the files for the index: walking the store, the rows of one file, the reports.

Shared by ``rebuild``, ``sync`` and ``verify``: what a file says, as rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from .. import eventlog, packed
from .. import files as diskio
from ..errors import (
    CorruptFileError,
    StatekitError,
)
from ..ids import ID_PATTERN
from ..models import Episode, Show
from ..parsing import episode_model, parse_episode, parse_show
from .rows import dumped_row, episode_row, event_rows_of, event_values, positions_of, show_row, spent_in

if TYPE_CHECKING:
    from ..writes import Writer

log = logging.getLogger("statekit")

Progress = Callable[[int, int], None]
"""progress(done, total): called as a long operation goes."""



REBUILD_BATCH = 500


@dataclass
class Problem:
    kind: str
    path: str
    message: str
    episode: str | None = None
    line: int | None = None
    field: str | None = None


@dataclass
class RebuildReport:
    shows: int = 0
    episodes: int = 0
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """Episodes whose file holds a pending hand edit: indexed as their committed version."""


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    reindexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    read: int = 0
    """Files read because their stat moved (or could have hidden a change)."""

    @property
    def clean(self) -> bool:
        return not self.rejected


@dataclass
class VerifyReport:
    checked: int = 0
    full: int = 0
    """Episodes checked in full (parsed, their logs replayed)."""
    unchanged: int = 0
    """Episodes whose inputs were those of their last clean check: its result was used (``index/verified``)."""
    checkpoints: int = 0
    backups: int = 0
    assets: int = 0
    """Stored objects hashed (each once, however many episodes name it)."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def index_path(root: str) -> str:
    return os.path.join(root, ".statekit", "index.db")


def sha256_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def problem(exc: StatekitError, path: str, episode: str | None, kind: str = "invalid") -> Problem:
    return Problem(kind=kind, path=path, message=exc.one_line(), episode=episode,
                   line=getattr(exc, "line", None), field=getattr(exc, "field", None))


# --- walking the files -----------------------------------------------------------


def dirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and ID_PATTERN.fullmatch(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def walk(root: str) -> Iterator[tuple[str, str, str, os.stat_result]]:
    """(show, episode, path, stat) of every episode file, show by show.
    (Plain string paths: on 100,000 episodes ``os.path.join`` is a cost.)"""
    for show, ep, base in episode_folders(root):
        found = episode_file(base)
        if found is not None:
            yield show, ep, found[0], found[1]


def episode_folders(root: str) -> Iterator[tuple[str, str, str]]:
    """(show, episode, the folder's path + ``/episode.``) of every episode folder, show
    by show (``walk`` without looking for the files: a rebuild's workers look)."""
    shows = root + "/shows"
    for show in dirs(shows):
        folder = f"{shows}/{show}/episodes"
        for ep in dirs(folder):
            yield show, ep, f"{folder}/{ep}/episode."


def episode_file(base: str) -> tuple[str, os.stat_result] | None:
    """The episode file (YAML first) of a folder (``base``: ``episode_folders``' path) and its stat.

    Whether ``episode.yaml`` is there is asked without its ``lstat``'s ``FileNotFoundError`` in a
    store of JSON files (``os.access``: no exception made, half a failed ``lstat``'s time). A lookup
    that fails there fails for a missing name, since the JSON file's lookup in the same folder, with
    a name of the same length, goes through: else the YAML file's ``lstat`` raises as it did."""
    yaml = base + "yaml"
    if _exists(yaml, F_OK, follow_symlinks=False):
        try:
            return yaml, os.lstat(yaml)
        except FileNotFoundError:  # (gone since)
            pass
    json = base + "json"
    try:
        return json, os.lstat(json)
    except FileNotFoundError:
        return None
    except OSError:  # (not a missing name: the YAML file's lookup fails alike, and says so first, as before)
        return yaml, os.lstat(yaml)


_exists = os.access
F_OK = os.F_OK


def show_order(writer: Writer, show: str) -> tuple[dict[str, int], dict[str, Any] | None, bytes | None]:
    """Positions of the episodes show.yaml orders by hand, and the show file's data."""
    path = os.path.join(writer.root, "shows", show, "show.yaml")
    raw = diskio.read_file(path)
    if raw is None:
        return {}, None, None
    parsed = parse_show(path, raw)
    return positions_of(parsed.model.order), parsed.data, raw


def show_record(writer: Writer, show: str, data: dict[str, Any] | None, raw: bytes | None) -> dict[str, Any]:
    path = os.path.join("shows", show, "show.yaml")
    if data is None or raw is None:  # no show.yaml (yet): the show exists through its episodes
        now = datetime.now().astimezone()
        data = Show(show_id=show, title=show, created_at=now, updated_at=now).model_dump(mode="json")
        return show_row(data, path=path, size=0, mtime_ns=0, sha256="", checked_at_ns=0)
    st = os.stat(os.path.join(writer.root, path))
    Show.model_validate(data)
    return show_row(data, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256_of(raw),
                    checked_at_ns=time.time_ns())


def rows_for(writer: Writer, show: str, ep: str, path: str, raw: bytes, st: os.stat_result,
              position: int | None, *, cache: bool = False, pending: list[str] | None = None,
              values: bool = False) -> tuple[dict[str, Any], list[Any], Episode | None]:
    """Index rows of one episode file (and its model; None for a rebuild's file in the form
    the model writes, whose row comes from its data: ``rows:dumped_row``). ``cache``: keep the parse in the store's
    cache (sync, whose adoption of an edit reads the file again; not a rebuild).
    ``pending`` (a rebuild): a file holding a pending hand edit is indexed as the
    committed version its chained log rebuilds, and its episode is added to ``pending``.
    ``values`` (a rebuild): the event rows as ``event_values`` tuples, not dicts."""
    parsed = writer.cached(path, raw) if cache else None
    if parsed is None:
        # a rebuild's (``values``): a file in the form the model writes is checked without its model
        parsed = parse_episode(path, raw, show, ep, writer.pipeline, writer.clock(), model=not values,
                               retired=lambda: writer.graphs.retired_stages(writer.pipeline))
        if cache:
            writer.remember(path, parsed)
    model: Episode | None = parsed.model
    sha = sha256_of(raw)
    log_path = os.path.join(os.path.dirname(path), "events.jsonl")
    version = parsed.dumped["version"] if model is None else model.version
    found = log_values(log_path, version, show, ep) if values else None
    lines, rows = found if found is not None else (eventlog.read_events(log_path, version, strict=False), None)
    data = None
    edit = None
    if pending is not None and lines and eventlog.is_chained(lines[-1]) and lines[-1].get("sha256") != sha:
        model = episode_model(parsed)
        lines, data = committed_lines(log_path, sha, model.version)
        rows = None
        if data is not None:
            edit = {"fields": writer.pending_fields(data, model)}
            model = Episode.model_validate(data)
            pending.append(f"{show}/{ep}")
    where = {"path": relative(path, writer.root), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
             "checked_at_ns": time.time_ns(), "position": position, "pending": edit}
    if model is None:  # (``dumped_row`` is ``episode_row`` of the model from its dump)
        row = dumped_row(parsed.dumped, writer.pipeline, **where)  # type: ignore[arg-type]
    else:  # the model's JSON data: the file's own when it is in that form (``parsing.dumped_episode``)
        if data is None:
            data = parsed.dumped if parsed.dumped is not None else model.model_dump(mode="json")
        row = episode_row(model, data, writer.pipeline, **where)  # type: ignore[arg-type]
    if rows is None:
        rows = event_rows(log_path, lines, show, ep, values=values)
    if unadopted_log(lines, sha):  # a hand edit sync has not adopted: never trust its stat
        row["file_stamp"] = None
    return row, rows, model


_NONE_OR_STR = frozenset((type(None), str))
_NONE_OR_NUMBER = frozenset((type(None), int, float))


def log_values(log_path: str, committed: int, show: str, ep: str) -> tuple[list[dict[str, Any]], list[Any]] | None:
    """``(read_events(log_path, committed, strict=False), event_values(those, show, ep))`` of a clean
    log in one pass: every line an event of the types the index stores (``eventlog``'s check), the
    committed ones in rising versions, their times as stored. None for any other log (the plain
    reading then decides, and words the error). (``tests/test_parsing_fast`` holds them equal.)"""
    raw = packed.read_either(log_path, None)
    if not raw:
        return [], []
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn append
    events: list[dict[str, Any]] = []
    out: list[Any] = []
    append, add = events.append, out.append
    loads, dumps = orjson.loads, orjson.dumps
    last = -1 << 63
    stage: str | None = None
    for line in lines:
        try:
            event = loads(line)
        except (ValueError, RecursionError):
            return None
        if type(event) is not dict:
            return None
        get = event.get
        version, at, kind, moved, cost, left = get("version"), get("at"), get("kind"), get("to_stage"), get("cost"), \
            get("from_stage")
        if not (type(version) is int and type(at) is str and type(kind) is str and type(get("show_id")) is str
                and type(get("episode_id")) is str and type(left) in _NONE_OR_STR and type(moved) in _NONE_OR_STR
                and type(get("message")) in _NONE_OR_STR and type(get("sha256")) in _NONE_OR_STR
                and type(get("stage")) in _NONE_OR_STR and type(cost) in _NONE_OR_NUMBER):
            return None
        if version > committed:  # an uncommitted tail
            continue
        if (events and version <= last) or not (len(at) == 27 and at[-1] == "Z"):
            return None
        last = version
        append(event)
        if "doc" in event or "patch" in event:  # ``rows.lean``
            data = event.copy()
            data.pop("doc", None)
            data.pop("patch", None)
        else:
            data = event
        add((show, ep, version, at, kind, left, moved, get("message"), cost, dumps(data).decode(),
             None if cost is None else spent_in(event, stage)))
        if moved:
            stage = moved
    return events, out


def relative(path: str, root: str) -> str:
    """``path`` (a file found under ``root``) relative to the root; the string's
    tail when it starts with it (``os.path.relpath`` costs as much as a file's row)."""
    top = root.rstrip(os.sep) + os.sep
    return path[len(top):] if path.startswith(top) else os.path.relpath(path, root)


def committed_lines(log_path: str, sha: str, file_version: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A chained log's committed lines when the file (whose hash is ``sha``) is not what
    its last line says, and the committed data if the file is a pending hand edit (None
    if the last line is only the uncommitted tail of a write that stopped before its rename)."""
    lines = eventlog.read_events(log_path, 1 << 62, strict=False)
    which, pending = eventlog.committing(lines[-1], lines[-2] if len(lines) > 1 else None, sha, file_version,
                                         lambda: None)
    if which:
        lines = lines[:-1]
    if not pending:
        return lines, None
    replayed = eventlog.replay(lines, path=log_path, last_only=True)
    if not replayed:
        raise CorruptFileError(f"{log_path}: the log cannot rebuild the committed version", path=log_path)
    return lines, replayed[-1][1]


def committed_rows(writer: Writer, show: str, ep: str, path: str, st: os.stat_result, error: str,
                   values: bool = False) -> tuple[dict[str, Any], list[Any], Episode] | None:
    """The rows of the committed version of an episode whose file cannot be read (``error``:
    why), from its chained log; None if the log cannot give it (none, unchained, or damaged)."""
    log_path = os.path.join(os.path.dirname(path), "events.jsonl")
    try:
        lines = eventlog.read_events(log_path, 1 << 62, strict=False)
        if not lines or not eventlog.is_chained(lines[-1]):
            return None
        replayed = eventlog.replay(lines, path=log_path, last_only=True)
        if not replayed:
            return None
        model = Episode.model_validate(replayed[-1][1])
        row = episode_row(model, replayed[-1][1], writer.pipeline, path=os.path.relpath(path, writer.root),
                          size=st.st_size, mtime_ns=st.st_mtime_ns, sha256="", checked_at_ns=time.time_ns(),
                          position=None, pending={"fields": None, "error": error})  # type: ignore[arg-type]
        row["file_stamp"] = None
        return row, event_rows(log_path, lines, show, ep, values=values), model
    except (StatekitError, ValueError):
        return None


def unadopted(lines: list[dict[str, Any]], sha: str) -> bool:
    """The file is not the one its last event row says statekit wrote (a hand edit)."""
    return bool(lines) and lines[-1]["data"].get("sha256") not in (None, sha)


def unadopted_log(events: list[dict[str, Any]], sha: str) -> bool:
    """``unadopted`` from the log's events themselves (an event row's ``data`` is its event)."""
    return bool(events) and events[-1].get("sha256") not in (None, sha)


def event_rows(log_path: str, lines: list[dict[str, Any]], show: str, ep: str, *, values: bool = False) -> list[Any]:
    """The index rows of a log's events (``verify`` derives them too, so it
    passes only what a rebuild can index). ``values``: as ``event_values`` tuples."""
    try:
        if values:
            return event_values(lines, show, ep)
        rows = event_rows_of(lines)
    except ValueError as exc:  # a damaged time: reported like any damaged line
        raise CorruptFileError(f"{log_path}: an event's time is not an ISO timestamp ({exc})", path=log_path) from None
    for e in rows:  # a line that names another episode is this log's line all the same (verify reports it)
        e["show_id"], e["episode_id"] = show, ep
    return rows


