"""``sync``: find new, changed and deleted episode files by stat plus content
hash (a file stat'ed within the file system's timestamp granularity of its
last change is hashed again: the racy-clean case), adopt valid hand edits as
normal writes (one ``external_edit`` event, ``Writer.adopt``), report invalid ones.
"""

from __future__ import annotations

import logging
import os
import stat as statmod
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from .. import files as diskio
from ..codecs import line_of
from ..errors import (
    CorruptFileError,
    IndexUnavailableError,
    SchemaVersionError,
    StatekitError,
    StorageError,
    UnsafePathError,
    ValidationError,
)
from ..ids import ID_PATTERN
from ..models import Episode
from .scan import Problem, Progress, SyncReport, dirs, problem, rows_for, sha256_of, unadopted
from .tables import (
    episodes,
    events,
)

if TYPE_CHECKING:
    from ..shows import Shows
    from ..writes import Writer

log = logging.getLogger("statekit")


# --- sync -------------------------------------------------------------------------


def stage_by_log(lines: list[dict[str, Any]]) -> str | None:
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
    for show in dirs(writer.root + "/shows"):
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
        report.rejected.append(problem(exc, path, key))
        _mark_pending(writer, before, show, ep, {"fields": None, "error": exc.one_line()})
        return
    if raw is None:
        return
    report.read += 1
    sha = sha256_of(raw)
    try:
        row, lines, model = rows_for(writer, show, ep, path, raw, st, None, cache=True)
    except (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError, StorageError) as exc:
        if before is not None and sha == before[0]:
            return
        report.rejected.append(problem(exc, path, key))
        _mark_pending(writer, before, show, ep, {"fields": None, "error": exc.one_line()})
        return
    if before is not None and sha == before[0] and not unadopted(lines, sha):
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
    stage_before = stage_by_log(lines)
    if stage_before is not None and model.stage != stage_before and model.stage not in writer.pipeline.next_stages(
            stage_before):
        legal = ", ".join(writer.pipeline.next_stages(stage_before)) or "none"

        line = line_of(raw, ("stage",))
        report.rejected.append(Problem(
            kind="illegal-move", path=path, episode=key, line=line, field="stage",
            message=f"{path}:{line}: stage: the edit moves {stage_before!r} -> {model.stage!r}, which the "
                    f"pipeline does not allow (legal next stages: {legal}); the file was left as it is",
        ))
        _mark_pending(writer, before, show, ep, model)
        return
    try:
        adopted, fields = writer.adopt(show, ep, before[1] if before is not None else None, stage_before)
    except StatekitError as exc:
        report.rejected.append(problem(exc, path, key))
        _mark_pending(writer, before, show, ep, model)
        return
    if lines and (before is None or before[2] != (len(lines), lines[-1]["version"])):
        # the index missed earlier events of the log (a writer stopped between its file and
        # its index write): they go in with the adopted edit's own
        writer.index.write(event_rows=lines)
    if before is not None or lines:  # an edit of an episode statekit wrote (the index may have missed it)
        report.changed.append({"episode": key, "fields": fields, "version": adopted.version})
    else:  # a file a person made (a copied folder): new to the store
        report.added.append(key)


def _mark_pending(writer: Writer, before: tuple[Any, ...] | None, show: str, ep: str,
                  edit: Episode | dict[str, Any]) -> None:
    """A chained store's row keeps the committed version of a file whose edit sync could not
    adopt, and says the edit is pending (``edit``: the edited file, or why it cannot be read)."""
    if not writer.chained or before is None or not isinstance(before[1], dict):
        return
    pending = edit if isinstance(edit, dict) else {"fields": writer.pending_fields(before[1], edit)}
    try:
        writer.index.set_pending(show, ep, pending)
    except IndexUnavailableError as exc:
        log.warning("statekit: the index could not mark %s/%s's pending edit (%s)", show, ep, exc)


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

    folders = set(dirs(os.path.join(writer.root, "shows")))
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
            report.rejected.append(problem(exc, path, None))
            continue
        writer.index.set_positions(show, reconciled)
    for show in sorted(known.keys() - folders):
        writer.index.remove_show(show)


