"""Keeping the index true to the files: open, rebuild, sync, verify.

- ``open_index``: connect; bring an old index to the current revision through
  Alembic; rebuild from the files one that cannot be upgraded, or that was
  never filled.
- ``rebuild``: a fresh database built from the files alone, swapped in at once.
- ``sync``: finds new, changed and deleted episode files by stat plus content
  hash (a file stat'ed within the file system's timestamp granularity of its
  last change is hashed again: the racy-clean case), adopts valid hand edits
  as normal writes with one ``external_edit`` event, reports invalid ones.
- ``verify``: index vs files, files vs their event logs, duplicates of
  unique metadata values.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat as statmod
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from alembic.util import CommandError
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .. import eventlog, folders
from .. import files as diskio
from .. import objects as assets
from ..codecs import YAML_CODEC, line_of, same
from ..errors import (
    CorruptFileError,
    SchemaVersionError,
    StatekitError,
    StorageError,
    UnsafePathError,
    ValidationError,
)
from ..ids import ID_PATTERN
from ..models import Episode, Show
from ..parsing import read_checkpoint
from ..repair import checkpoint_stages
from ..shows import reconcile
from ..unique import claims as claims_of
from ..unique import shown
from .db import Index, create_schema, engine_for, revision_of
from .dialect import (
    WRITE,
    Compiled,
    database_path,
    finish_build,
    replace_database,
    sqlite_url,
)
from .rows import claim_rows, episode_row, event_rows_of, json_text, show_row, totals_delta
from .tables import (
    INDEX_REVISION,
    ROWS_REVISION,
    episodes,
    events,
    index_meta,
    metadata,
    stage_totals,
    unique_keys,
    unique_values,
)

if TYPE_CHECKING:
    from ..shows import Shows
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


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _problem(exc: StatekitError, path: str, episode: str | None, kind: str = "invalid") -> Problem:
    return Problem(kind=kind, path=path, message=exc.one_line(), episode=episode,
                   line=getattr(exc, "line", None), field=getattr(exc, "field", None))


# --- walking the files -----------------------------------------------------------


def _dirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and ID_PATTERN.fullmatch(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def walk(root: str) -> Iterator[tuple[str, str, str, os.stat_result]]:
    """(show, episode, path, stat) of every episode file, show by show.
    (Plain string paths: on 100,000 episodes ``os.path.join`` is a cost.)"""
    shows = root + "/shows"
    for show in _dirs(shows):
        folder = f"{shows}/{show}/episodes"
        for ep in _dirs(folder):
            base = f"{folder}/{ep}/episode."
            for path in (base + "yaml", base + "json"):
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                yield show, ep, path, st
                break


def _show_order(writer: Writer, show: str) -> tuple[dict[str, int], dict[str, Any] | None, bytes | None]:
    """Positions of the show's episodes (from show.yaml), and the show file's data."""
    path = os.path.join(writer.root, "shows", show, "show.yaml")
    raw = diskio.read_file(path)
    if raw is None:
        return {}, None, None
    data = YAML_CODEC.load(raw, path)
    listed = data.get("episodes")
    if not isinstance(listed, list):
        listed = []
    return {ep: i for i, ep in enumerate(dict.fromkeys(str(e) for e in listed))}, data, raw


def _show_record(writer: Writer, show: str, data: dict[str, Any] | None, raw: bytes | None) -> dict[str, Any]:
    path = os.path.join("shows", show, "show.yaml")
    if data is None or raw is None:  # no show.yaml (yet): the show exists through its episodes
        now = datetime.now().astimezone()
        data = Show(show_id=show, title=show, created_at=now, updated_at=now).model_dump(mode="json")
        return show_row(data, path=path, size=0, mtime_ns=0, sha256="", checked_at_ns=0)
    st = os.stat(os.path.join(writer.root, path))
    Show.model_validate(data)
    return show_row(data, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=_sha256(raw),
                    checked_at_ns=time.time_ns())


def _rows_for(writer: Writer, show: str, ep: str, path: str, raw: bytes, st: os.stat_result,
              position: int | None, *, cache: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]], Episode]:
    """Index rows of one episode file. ``cache``: keep the parse in the store's
    cache (sync, whose adoption of an edit reads the file again; not a rebuild)."""
    parsed = writer.cached(path, raw) if cache else None
    if parsed is None:
        parsed = writer.parse_episode(path, raw, show, ep)
        if cache:
            writer.remember(path, parsed)
    model: Episode = parsed.model
    row = episode_row(
        model, model.model_dump(mode="json"), writer.pipeline, path=os.path.relpath(path, writer.root),
        size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=_sha256(raw), checked_at_ns=time.time_ns(),
        position=position,  # type: ignore[arg-type]
    )
    log_path = os.path.join(os.path.dirname(path), "events.jsonl")
    lines = eventlog.read_events(log_path, model.version, strict=False)
    rows = _event_rows(log_path, lines, show, ep)
    if _unadopted(rows, row["file_sha256"]):  # a hand edit sync has not adopted: never trust its stat
        row["file_stamp"] = None
    return row, rows, model


def _unadopted(lines: list[dict[str, Any]], sha: str) -> bool:
    """The file is not the one its last event says statekit wrote (a hand edit)."""
    return bool(lines) and lines[-1]["data"].get("sha256") not in (None, sha)


def _event_rows(log_path: str, lines: list[dict[str, Any]], show: str, ep: str) -> list[dict[str, Any]]:
    """The index rows of a log's events (``verify`` derives them too, so it
    passes only what a rebuild can index)."""
    try:
        rows = event_rows_of(lines)
    except ValueError as exc:  # a damaged time: reported like any damaged line
        raise CorruptFileError(f"{log_path}: an event's time is not an ISO timestamp ({exc})", path=log_path) from None
    for e in rows:  # a line that names another episode is this log's line all the same (verify reports it)
        e["show_id"], e["episode_id"] = show, ep
    return rows


# --- opening -------------------------------------------------------------------


def migrations_dir() -> str:
    import statekit._migrations as migrations

    return os.path.dirname(os.path.abspath(migrations.__file__))


def alembic_upgrade(conn: Connection, revision: str = "head") -> None:
    """Run the Alembic migrations on ``conn`` (handed to env.py)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", migrations_dir())
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def open_index(writer: Writer, url: str | None = None) -> Index:
    """The store's index, at the current revision and filled from the files.

    An index at an older revision is upgraded with Alembic (on its own
    connection); one that cannot be upgraded (damaged, foreign, or from a
    newer statekit) is rebuilt from the files instead of refusing to start.
    One whose rows were derived by another revision (``ROWS_REVISION``: after
    an upgrade here, or by ``alembic upgrade head`` alone) is rebuilt too, so
    every row is what this code derives from the files.
    """
    path = index_path(writer.root)
    if url is None:  # SQLite follows symlinks: refuse one in place of .statekit or of the database's files
        folders.check_dirs(writer.root, (".statekit",))
        for name in (path, path + "-wal", path + "-shm", path + "-journal"):
            if os.path.islink(name):
                raise UnsafePathError(f"refusing to follow a symlink at {name}", path=name)
    index = Index(engine_for(url or sqlite_url(path), busy_timeout=writer.config.lock_timeout), writer.pipeline,
                  writer.config.unique)
    if url is None and not os.path.exists(path):
        _build_unless_built(writer, index)
        return index
    try:
        with index.engine.connect() as conn:
            current = revision_of(conn)
            if current != INDEX_REVISION:
                with conn.begin():
                    if current is None and not _has_tables(conn):
                        create_schema(conn)
                        _stamp(conn)
                    else:
                        alembic_upgrade(conn)
            filled = conn.execute(select(episodes.c.show_id).limit(1)).first() is not None
            derived = rows_revision(conn)
    except (SQLAlchemyError, CommandError, StatekitError, OSError) as exc:  # cannot be upgraded: rebuild
        if url is not None:
            raise
        log.warning("statekit: the index could not be opened or upgraded (%s); rebuilding it from the files", exc)
        _build_unless_built(writer, index, damaged=True)
        return index
    if derived != ROWS_REVISION:
        log.info("statekit: the index's rows were derived by %s; rebuilding them from the files for revision %s",
                 f"revision {derived}" if derived else "a statekit older than revision 0005", ROWS_REVISION)
        _build_unless_built(writer, index)
    elif not filled and any(walk(writer.root)):
        _build_unless_built(writer, index)
    _refresh_unique(writer, index)
    return index


def _refresh_unique(writer: Writer, index: Index) -> None:
    """Derive the index's unique values again if ``unique:`` changed since."""
    try:
        if index.unique_current():
            return
        with _index_lock(writer):
            index.refresh_unique()
    except (SQLAlchemyError, StatekitError) as exc:
        log.warning("statekit: the index could not record the unique keys (%s); duplicates are caught again "
                    "once 'statekit rebuild-index' succeeds", exc)


def rows_revision(conn: Connection) -> str | None:
    """The ``ROWS_REVISION`` of the code that derived an index's rows (None:
    made before revision 0005 recorded it)."""
    return conn.execute(select(index_meta.c.value).where(index_meta.c.key == "rows_revision")).scalar()


def _build_unless_built(writer: Writer, index: Index, damaged: bool = False) -> None:
    """Rebuild, unless another process built the index while we waited for it."""
    with _index_lock(writer):
        if not damaged and _ready(index):
            return
        _rebuild_locked(writer, index, None, RebuildReport())


def _ready(index: Index) -> bool:
    path = database_path(index.engine)
    if path is not None and not os.path.exists(path):
        return False
    try:
        with index.engine.connect() as conn:
            return (revision_of(conn) == INDEX_REVISION and rows_revision(conn) == ROWS_REVISION
                    and conn.execute(select(episodes.c.show_id).limit(1)).first() is not None)
    except SQLAlchemyError:
        return False


REBUILD_WAIT_S = 600.0
"""How long a rebuild waits for another process's rebuild of the same index."""


def _index_lock(writer: Writer) -> Any:
    return writer.locks.index(max(REBUILD_WAIT_S, writer.config.lock_timeout))


def _has_tables(conn: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).get_table_names())


def _stamp(conn: Connection) -> None:
    """Mark a database made by ``create_schema`` as at the head revision, its rows derived by this code."""
    conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{INDEX_REVISION}')")
    _mark_rows_derived(conn)


def _mark_rows_derived(conn: Connection) -> None:
    conn.execute(index_meta.delete().where(index_meta.c.key == "rows_revision"))
    conn.execute(index_meta.insert().values(key="rows_revision", value=ROWS_REVISION))


def upgrade(writer: Writer) -> str:
    """Bring the index to the current revision (``statekit db upgrade``); the revision."""
    index = writer.index
    with index.engine.connect() as conn, conn.begin():
        alembic_upgrade(conn)
        return revision_of(conn) or ""


# --- rebuild ----------------------------------------------------------------------


def rebuild(writer: Writer, progress: Progress | None = None, *, index: Index | None = None) -> RebuildReport:
    """Build a fresh index from the files alone, then swap it in at once."""
    index = index or writer.index
    report = RebuildReport()
    with _index_lock(writer):
        _rebuild_locked(writer, index, progress, report)
    return report


def _rebuild_locked(writer: Writer, index: Index, progress: Progress | None, report: RebuildReport) -> None:
    target = database_path(index.engine)
    if target is None:  # a server database: rebuild in one transaction
        with index.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            for table in metadata.sorted_tables:
                conn.execute(table.delete())
            _fill(writer, conn, report, progress)
            _mark_rows_derived(conn)
        return
    built = f"{target}.build-{os.getpid()}"
    for leftover in (built, built + "-wal", built + "-shm", built + "-journal"):
        if os.path.lexists(leftover):  # a dangling symlink too: SQLite would create its target
            os.unlink(leftover)
    engine = engine_for(sqlite_url(built), scratch=True)
    try:
        with engine.connect() as conn:
            with conn.begin():
                create_schema(conn)
                _stamp(conn)
            with conn.begin():
                _fill(writer, conn, report, progress)
        finish_build(engine)
    finally:
        engine.dispose()
    index.close()  # its connections reopen on the new content
    replace_database(target, built)


def _fill(writer: Writer, conn: Connection, report: RebuildReport, progress: Progress | None) -> None:
    found = list(walk(writer.root))
    total = len(found)
    deltas: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    show_rows = []
    claims: list[dict[str, Any]] = []
    order: dict[str, dict[str, int]] = {}
    on_disk: dict[str, list[str]] = defaultdict(list)
    for show, ep, _path, _st in found:
        on_disk[show].append(ep)
    for show in _dirs(os.path.join(writer.root, "shows")):  # every show, with or without episodes
        try:
            listed, data, raw = _show_order(writer, show)
            show_rows.append(_show_record(writer, show, data, raw))
        except (StatekitError, ValueError) as exc:
            listed = {}
            error = exc if isinstance(exc, StatekitError) else ValidationError(str(exc))
            report.problems.append(_problem(error, os.path.join(writer.root, "shows", show, "show.yaml"), None))
            show_rows.append(_show_record(writer, show, None, None))
        # the order sync would give: listed episodes first, then the others by id
        ids = reconcile(list(listed), sorted(on_disk.get(show, [])))
        order[show] = {ep: i for i, ep in enumerate(ids)}
    for done, (show, ep, path, st) in enumerate(found, 1):
        try:  # one damaged episode (or a fifo, a symlink where its file should be) is reported, not fatal
            raw = diskio.read_file(path)
            if raw is None:
                continue
            row, lines, model = _rows_for(writer, show, ep, path, raw, st, None)
        except (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError, StorageError) as exc:
            report.problems.append(_problem(exc, path, f"{show}/{ep}"))
            continue
        positions = order.get(show, {})
        row["position"] = positions.get(ep, len(positions))
        rows.append(row)
        event_rows.extend(lines)
        claims.extend(claim_rows(writer.config.unique, show, ep, row["data"]))
        totals_delta(deltas, show, None, (model.stage, model.costs))
        if len(rows) >= REBUILD_BATCH:
            _flush(conn, rows, event_rows, report)
        if progress is not None:
            progress(done, total)
    _flush(conn, rows, event_rows, report)
    if show_rows:
        conn.execute(shows_insert(), show_rows)
    report.shows = len(show_rows)
    totals = [{"show_id": s, "stage": st, "episodes": int(d[0]), "cost": d[1]} for (s, st), d in deltas.items()]
    if totals:
        conn.execute(stage_totals.insert(), totals)
    if writer.config.unique:
        conn.execute(unique_keys.insert(), [{"key": k} for k in writer.config.unique])
    if claims:
        conn.execute(unique_values.insert(), claims)


def shows_insert() -> Any:
    from .tables import shows as show_table

    return show_table.insert()


def _flush(conn: Connection, rows: list[dict[str, Any]], event_rows: list[dict[str, Any]],
           report: RebuildReport) -> None:
    """Insert a batch (through the raw cursor: SQLAlchemy's per-row work would
    cost more than SQLite's)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if rows:
        insert = _bulk(conn, "episodes")
        cursor.executemany(insert.sql, [insert.params(dict(r, data=json_text(r["data"]), costs=json_text(r["costs"])))
                                        for r in rows])
        report.episodes += len(rows)
    if event_rows:
        insert = _bulk(conn, "events")
        cursor.executemany(insert.sql, [insert.params(dict(e, data=json_text(e["data"]))) for e in event_rows])
        report.events += len(event_rows)
    rows.clear()
    event_rows.clear()


def _bulk(conn: Connection, table: str) -> Compiled:
    from sqlalchemy import bindparam

    from .tables import metadata

    target = metadata.tables[table]
    stmt = target.insert().values({c.name: bindparam(c.name) for c in target.columns if c.name != "id"})
    return Compiled(stmt, conn.engine)


# --- sync -------------------------------------------------------------------------


def _stage_by_log(lines: list[dict[str, Any]]) -> str | None:
    for line in reversed(lines):
        if line.get("to_stage"):
            return str(line["to_stage"])
    return None


def sync(writer: Writer, shows: Shows, progress: Progress | None = None) -> SyncReport:
    """Bring the index up to date with the files, adopting valid hand edits.

    Show by show: the index's (size, mtime, checked) of each episode file
    against one ``lstat``; only files whose stat moved, or that were checked
    within the timestamp granularity of their last change, are read.
    """
    index = writer.index
    report = SyncReport()
    known = index.file_stamps()
    candidates = []
    gone: list[tuple[str, str]] = []
    membership_changed: set[str] = set()
    on_disk: dict[str, list[str]] = {}
    lstat = os.lstat
    nothing: tuple[set[str], set[str]] = (set(), set())
    for show in _dirs(writer.root + "/shows"):
        indexed, trusted = known.pop(show, nothing)
        folder = f"{writer.root}/shows/{show}/episodes/"
        present = on_disk[show] = []
        try:
            entries = os.scandir(folder) if statmod.S_ISDIR(lstat(folder).st_mode) else ()
        except (FileNotFoundError, NotADirectoryError):
            entries = ()
        for entry in entries:
            ep = entry.name
            if not entry.is_dir(follow_symlinks=False) or (ep not in indexed and not ID_PATTERN.fullmatch(ep)):
                continue  # not an episode folder
            path = f"{folder}{ep}/episode.yaml"
            try:
                st = lstat(path)
            except FileNotFoundError:
                path = path[:-4] + "json"
                try:
                    st = lstat(path)
                except FileNotFoundError:
                    continue
            present.append(ep)
            # unchanged: its stamp (size and mtime, checked long enough after that mtime
            # that a later edit would have moved it) is the file's; else read it
            if f"{ep}|{st.st_size}|{st.st_mtime_ns}" not in trusted:
                candidates.append((show, ep, path, st, ep in indexed))
        if entries:
            entries.close()
        vanished = indexed.difference(present)
        if vanished or len(present) != len(indexed):
            membership_changed.add(show)
        gone.extend((show, ep) for ep in sorted(vanished))
    for show, (indexed, _trusted) in sorted(known.items()):  # a whole show folder went
        gone.extend((show, ep) for ep in sorted(indexed))
    report.unchanged = sum(len(eps) for eps in on_disk.values()) - len(candidates)
    total = len(candidates)
    touched: list[dict[str, Any]] = []
    indexed_rows = _indexed_states(writer, [(show, ep) for show, ep, _p, _s, indexed in candidates if indexed])
    for done, (show, ep, path, st, _indexed) in enumerate(candidates, 1):
        _sync_one(writer, report, touched, show, ep, path, st, indexed_rows.get((show, ep)))
        if progress is not None:
            progress(done, total)
    report.unchanged += len(touched)
    if touched:
        index.write(rows=touched)
    if gone:
        gone.sort()
        index.write(removed=gone)
        report.removed = [f"{s}/{e}" for s, e in gone]
    _sync_shows(writer, shows, report, on_disk, membership_changed)
    return report


def _sync_one(writer: Writer, report: SyncReport, touched: list[dict[str, Any]], show: str, ep: str, path: str,
              st: os.stat_result, before: tuple[Any, ...] | None) -> None:
    """One file whose stat moved. ``before``: its row's (file hash, data, (indexed events, highest
    version)), or None if not indexed."""
    key = f"{show}/{ep}"
    try:
        raw = diskio.read_file(path)
    except StatekitError as exc:  # not a regular file, or a symlink: reported; the index keeps its row
        report.rejected.append(_problem(exc, path, key))
        return
    if raw is None:
        return
    report.read += 1
    sha = _sha256(raw)
    try:
        row, lines, model = _rows_for(writer, show, ep, path, raw, st, None, cache=True)
    except (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError, StorageError) as exc:
        if before is not None and sha == before[0]:
            return
        report.rejected.append(_problem(exc, path, key))
        return
    if before is not None and sha == before[0] and not _unadopted(lines, sha):
        # touched, not changed: remember the new stat (a hand edit that a rebuild indexed
        # as it is goes on below: it is adopted, or rejected, like any other)
        if before[2] != (model.version, model.version) and lines and lines[-1]["version"] == model.version:
            # the row is current but events are missing: a writer stopped between its file and its
            # index write, and a later write moved the row on past it; put the log's events back
            writer.index.write(rows=[row], event_rows=lines)
            report.reindexed.append(key)
            return
        touched.append(row)
        return
    if lines and lines[-1]["data"].get("sha256") == sha and lines[-1]["version"] == model.version:
        # statekit wrote this file; only the index missed it
        writer.index.write(rows=[row], event_rows=lines)
        (report.reindexed if before is not None else report.added).append(key)
        return
    # a person's edit: check the move, then adopt it as a normal write
    stage_before = _stage_by_log(lines)
    if stage_before is not None and model.stage != stage_before and model.stage not in writer.pipeline.next_stages(
            stage_before):
        legal = ", ".join(writer.pipeline.next_stages(stage_before)) or "none"

        line = line_of(raw, ("stage",))
        report.rejected.append(Problem(
            kind="illegal-move", path=path, episode=key, line=line, field="stage",
            message=f"{path}:{line}: stage: the edit moves {stage_before!r} -> {model.stage!r}, which the "
                    f"pipeline does not allow (legal next stages: {legal}); the file was left as it is",
        ))
        return
    try:
        adopted, fields = writer.adopt(show, ep, before[1] if before is not None else None, stage_before)
    except StatekitError as exc:
        report.rejected.append(_problem(exc, path, key))
        return
    if lines and (before is None or before[2] != (len(lines), lines[-1]["version"])):
        # the index missed earlier events of the log (a writer stopped between its file and
        # its index write): they go in with the adopted edit's own
        writer.index.write(event_rows=lines)
    if before is not None:
        report.changed.append({"episode": key, "fields": fields, "version": adopted.version})
    else:
        report.added.append(key)


def _indexed_states(writer: Writer, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(file hash, data, (number of indexed events, highest event version)) of
    the indexed rows of ``keys``, in two queries per show."""
    by_show: dict[str, list[str]] = defaultdict(list)
    for show, ep in keys:
        by_show[show].append(ep)
    found = {}
    with writer.index.reading() as conn:
        for show, eps in by_show.items():
            stmt = select(episodes.c.episode_id, episodes.c.file_sha256, episodes.c.data).where(
                episodes.c.show_id == show).where(episodes.c.episode_id.in_(eps))
            logged = {ep: (n, top) for ep, n, top in conn.execute(
                select(events.c.episode_id, func.count(), func.max(events.c.version))
                .where(events.c.show_id == show).where(events.c.episode_id.in_(eps))
                .group_by(events.c.episode_id))}
            for ep, sha, data in conn.execute(stmt):
                found[(show, ep)] = (sha, data, logged.get(ep, (0, None)))
    return found


def _sync_shows(writer: Writer, shows: Shows, report: SyncReport, on_disk: dict[str, list[str]],
                membership_changed: set[str]) -> None:
    """Shows whose show.yaml changed, or whose episodes came or went: the
    episode list in show.yaml is reconciled with the folders, and the index
    takes the show's title and episode order."""
    from .tables import shows as show_table

    folders = set(_dirs(os.path.join(writer.root, "shows")))
    with writer.index.reading() as conn:
        known = {s: (size, mtime) for s, size, mtime in conn.execute(
            select(show_table.c.show_id, show_table.c.file_size, show_table.c.file_mtime_ns))}
    for show in sorted(folders):
        path = os.path.join(writer.root, "shows", show, "show.yaml")
        try:
            st = os.stat(path, follow_symlinks=False)
            state = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            state = None
        if show not in membership_changed and show in known and known[show] == state:
            continue
        try:
            reconciled = shows.reconcile_file(show, on_disk.get(show, []))
        except StatekitError as exc:
            report.rejected.append(_problem(exc, path, None))
            continue
        writer.index.set_positions(show, reconciled)
    for show in sorted(known.keys() - folders):
        writer.index.remove_show(show)


# --- verify ------------------------------------------------------------------------


def verify(writer: Writer, progress: Progress | None = None) -> VerifyReport:
    """Every problem between files, their event logs and the index, every
    asset whose content no longer matches its hash, and every value of a
    unique key that more than one episode file holds."""

    report = VerifyReport()
    hashed: dict[str, str | None] = {}  # object sha256 -> its problem, if any
    with writer.index.reading() as conn:
        indexed = {(s, e): (version, sha, data) for s, e, version, sha, data in conn.execute(
            select(episodes.c.show_id, episodes.c.episode_id, episodes.c.version, episodes.c.file_sha256,
                   episodes.c.data))}
        indexed_events: dict[tuple[str, str], list[int]] = defaultdict(list)
        for s, e, v in conn.execute(select(events.c.show_id, events.c.episode_id, events.c.version)
                                    .order_by(events.c.version)):
            indexed_events[(s, e)].append(v)
        totals = {(s, st): (n, c) for s, st, n, c in conn.execute(select(stage_totals))}
        indexed_claims = {tuple(r) for r in conn.execute(select(
            unique_values.c.key, unique_values.c.value_sha256, unique_values.c.show_id, unique_values.c.episode_id))}
    expected: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    keys = writer.config.unique
    holders: dict[tuple[str, str], list[tuple[str, str, Any]]] = defaultdict(list)  # (key, sha) -> (ep, path, value)
    seen = set()
    found = list(walk(writer.root))
    for done, (show, ep, path, _st) in enumerate(found):
        if progress is not None:
            progress(done, len(found))
        key = f"{show}/{ep}"
        seen.add((show, ep))
        report.checked += 1
        _verify_kept_files(writer, report, show, ep, os.path.dirname(path))
        try:
            raw = diskio.read_file(path)
            if raw is None:
                continue
            parsed = writer.parse_episode(path, raw, show, ep)
        except StatekitError as exc:
            report.problems.append(_problem(exc, path, key))
            kept = indexed.get((show, ep))
            if kept is not None:  # the index rightly keeps the last good state: count that
                totals_delta(expected, show, None, (kept[2].get("stage"), kept[2].get("costs") or {}))
            continue
        model: Episode = parsed.model
        totals_delta(expected, show, None, (model.stage, model.costs))
        for claim in claims_of(keys, model.metadata):
            holders[(claim.key, claim.sha256)].append((key, path, claim.value))
        if model.assets:
            _verify_assets(writer, report, model, os.path.dirname(path), hashed)
        log_path = os.path.join(os.path.dirname(path), "events.jsonl")
        try:
            lines = eventlog.read_events(log_path, model.version)
            eventlog.validate_events(log_path, lines)  # what events() would refuse
            _event_rows(log_path, lines, show, ep)  # what a rebuild could not index
        except StatekitError as exc:
            report.problems.append(_problem(exc, log_path, key, "events"))
            lines = []
        versions = [line["version"] for line in lines]
        # (never range(1, version + 1): a hand-edited version can be huge)
        if len(versions) != model.version or any(v != i for i, v in enumerate(versions, 1)):
            missing = _missing(versions, model.version)
            report.problems.append(Problem(
                "events", log_path, f"{log_path}: the log does not hold versions 1..{model.version} exactly"
                + (f" (missing {missing})" if missing else " (out of order or repeated)"), key))
        foreign = next((line for line in lines if (line["show_id"], line["episode_id"]) != (show, ep)), None)
        if foreign is not None:
            report.problems.append(Problem(
                "events", log_path, f"{log_path}: event version {foreign['version']} names "
                f"{foreign['show_id']}/{foreign['episode_id']}, not {key}", key))
        elif lines and lines[-1].get("sha256") != _sha256(raw):
            report.problems.append(Problem(
                "edited", path, f"{path}: changed outside statekit since version {model.version} "
                "(run 'statekit sync' to adopt the edit)", key))
        row = indexed.get((show, ep))
        if row is None:
            report.problems.append(Problem("index", path, f"{key}: not in the index (run 'statekit sync')", key))
            continue
        if row[0] != model.version:
            report.problems.append(Problem(
                "index", path, f"{key}: the index holds version {row[0]}, the file version {model.version} "
                "(run 'statekit sync')", key))
        elif not same(row[2], model.model_dump(mode="json")):
            report.problems.append(Problem(
                "index", path, f"{key}: the index's copy of version {row[0]} differs from the file "
                "(run 'statekit sync')", key))
        if indexed_events.get((show, ep), []) != versions:
            report.problems.append(Problem(
                "index", log_path, f"{key}: the index's events differ from events.jsonl (run 'statekit sync')", key))
    for show, ep in sorted(indexed.keys() - seen):
        report.problems.append(Problem(
            "index", os.path.join(writer.root, "shows", show, "episodes", ep),
            f"{show}/{ep}: in the index, but its file is gone (run 'statekit sync')", f"{show}/{ep}"))
    for (claim_key, _sha), held in sorted(holders.items()):
        if len(held) > 1:
            names = ", ".join(ep_key for ep_key, _path, _value in held)
            report.problems.append(Problem(
                "duplicate", held[1][1], f"metadata {claim_key} = {shown(held[0][2])} is used by {len(held)} "
                f"episodes: {names} ({claim_key} is unique in statekit.yaml: give all but one another value)",
                held[1][0], field=f"metadata.{claim_key}"))
    # the index's unique values must be those of its own rows (the rows are checked against the files above)
    expected_claims = {(r["key"], r["value_sha256"], s, e) for (s, e), (_v, _sha, data) in indexed.items()
                       for r in claim_rows(keys, s, e, data)}
    if indexed_claims != expected_claims:
        report.problems.append(Problem(
            "index", index_path(writer.root), f"the index's unique values differ from its episode rows for "
            f"{len(indexed_claims ^ expected_claims)} value(s) (run 'statekit rebuild-index')"))
    for pair in set(totals) | set(expected):
        n, cost = totals.get(pair, (0, 0.0))
        want_n, want_cost = expected.get(pair, [0, 0.0])
        if n != want_n or abs(cost - want_cost) > 1e-6:
            report.problems.append(Problem(
                "index", index_path(writer.root),
                f"stage totals for {pair[0]}/{pair[1]} are {n} episodes, {cost:g} cost; the files say "
                f"{int(want_n)}, {want_cost:g} (run 'statekit rebuild-index')"))
    return report


def _verify_assets(writer: Writer, report: VerifyReport, model: Episode, directory: str,
                   hashed: dict[str, str | None]) -> None:
    """Each asset's object must hash to its name; the episode folder's copy
    (a hard link to the object, for people) must not have been replaced by
    different content."""

    for name, record in sorted(model.assets.items()):
        if record.sha256 not in hashed:
            report.assets += 1
            try:
                assets.check_object(writer.root, record.sha256, record.size, what="stored object")
                hashed[record.sha256] = None
            except StatekitError as exc:
                hashed[record.sha256] = exc.one_line()
        problem = hashed[record.sha256]
        if problem is not None:
            report.problems.append(Problem(
                "asset", assets.object_path(writer.root, record.sha256),
                f"asset {name!r} of {model.key}: {problem}", model.key))
            continue
        copy = os.path.join(directory, "assets", name)
        try:
            st = os.lstat(copy)
        except FileNotFoundError:
            continue
        if os.path.samestat(st, os.stat(assets.object_path(writer.root, record.sha256))):
            continue
        try:
            found, _size = assets.hash_file(copy)
        except OSError as exc:
            found = f"unreadable ({exc.strerror or exc})"
        if found != record.sha256:
            report.problems.append(Problem(
                "asset", copy, f"{copy}: differs from asset {name!r} of {model.key} as recorded (sha256 "
                f"{record.sha256[:12]}…); add the edited file with 'statekit asset add' to keep it", model.key))


def _verify_kept_files(writer: Writer, report: VerifyReport, show: str, ep: str, directory: str) -> None:
    """Checkpoints must match their own sha256; backups must be restorable."""

    key = f"{show}/{ep}"
    for stage in checkpoint_stages(directory):
        path = os.path.join(directory, "checkpoints", stage + ".json")
        report.checkpoints += 1
        try:
            read_checkpoint(path)
        except StatekitError as exc:
            report.problems.append(_problem(exc, path, key, "checkpoint"))
    try:
        backups = writer.backups_of(show, ep)
    except StatekitError as exc:  # e.g. a symlink in place of the backup folder
        report.problems.append(_problem(exc, getattr(exc, "path", None) or directory, key, "backup"))
        return
    for backup in backups:
        report.backups += 1
        if backup.problem is not None:
            report.problems.append(Problem(
                "backup", backup.path, f"{backup.path}: backup {backup.number} (version {backup.version}) "
                f"cannot be restored: {backup.problem}", key))


def _missing(versions: list[int], n: int) -> str:
    """The versions 1..n that ``versions`` lacks, as ranges (without listing 1..n)."""
    gaps = []
    last = 0
    for v in sorted({v for v in versions if 1 <= v <= n}):
        if v > last + 1:
            gaps.append((last + 1, v - 1))
        last = v
    if last < n:
        gaps.append((last + 1, n))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps)


__all__ = ["Problem", "RebuildReport", "SyncReport", "VerifyReport", "open_index", "rebuild", "sync", "verify",
           "upgrade"]
