"""Restore, repair and the gc of backups: putting damaged episodes right.

``restore`` puts a kept version back through the write path (version + 1,
one ``restore`` event); ``repair`` fixes what needs no person (a damaged
file gets its newest valid backup, an uncommitted event tail is dropped,
temp files and damaged checkpoints go) and then mends the index;
``gc_backups`` removes old backups, never the last good one of a damaged
episode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from . import eventlog, packed
from . import files as diskio
from .backups import Backup
from .codecs import Parsed
from .errors import CorruptFileError, IndexUnavailableError, SchemaVersionError, StatekitError, ValidationError
from .ids import check_id
from .layout import EPISODE_BACKUPS, backup_parts, backup_versions, checkpoint_stages, subdirs, trash_parts
from .models import Episode
from .objects import Removed
from .parsing import read_checkpoint, stamp
from .pipeline import refuse_move
from .shows import Shows
from .writes import Writer

if TYPE_CHECKING:
    from .index.scan import SyncReport, VerifyReport

Progress = Callable[[int, int], None]


@dataclass
class RepairReport:
    """What ``repair`` did (or, in a dry run, would do), and what it could not fix."""

    dry_run: bool = False
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    synced: SyncReport | None = None


class Repair:
    """Restore and repair over the store's ``writer`` and ``shows``; the
    index is mended with ``sync``, ``rebuild`` and ``verify`` (index maintenance)."""

    def __init__(self, writer: Writer, shows: Shows, sync: Callable[[], SyncReport],
                 rebuild: Callable[[], object], verify: Callable[[], VerifyReport]) -> None:
        self.writer = writer
        self.shows = shows
        self.sync = sync
        self.rebuild = rebuild
        self.verify = verify

    def backups(self, show: str, ep: str) -> list[Backup]:
        """The episode's backups, newest first, each checked."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        return self.writer.backups_of(show, ep)

    def restore(self, show: str, ep: str, backup: int = 1) -> Episode:
        """Put backup number ``backup`` back (see ``Store.restore``)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        if type(backup) is not int or backup < 1:
            raise ValidationError(f"backup must be a positive integer (1 = the newest), got {backup!r}")
        writer = self.writer
        paths = writer.require_folders(show, ep)
        with writer.locks.episode(show, ep), writer.episode_folder(show, ep) as folder, \
                writer.folders.open_existing(backup_parts(show, ep)) as kept:
            found = writer.backups.listing_in(paths, show, ep, kept, writer.parse_episode) if kept is not None else []
            if not found:
                raise ValidationError(f"episode {show}/{ep} has no backups",
                                      hint="backups are made when statekit overwrites an episode file")
            if backup > len(found):
                raise ValidationError(f"episode {show}/{ep} has {len(found)} backups, not {backup}",
                                      hint="list them with 'statekit restore SHOW/EP --list'")
            chosen = found[backup - 1]
            if chosen.problem is not None:
                raise CorruptFileError(f"backup {backup} of {show}/{ep} cannot be restored: {chosen.problem}",
                                       path=chosen.path, hint="choose another with --backup N")
            assert kept is not None  # it has backups
            source = writer.parse_episode(chosen.path, diskio.read_file(chosen.path, dir_fd=kept) or b"", show, ep)
            path = next((p for p in paths.files if diskio.lexists(p, dir_fd=folder)), paths.files[0])
            if os.path.splitext(path)[1] != os.path.splitext(chosen.path)[1]:
                path = os.path.splitext(path)[0] + os.path.splitext(chosen.path)[1]
            current: Parsed | None = None
            raw = diskio.read_file(path, dir_fd=folder)
            if raw is not None:
                try:
                    current = writer.parse_episode(path, raw, show, ep)
                except (CorruptFileError, ValidationError, SchemaVersionError):
                    current = None
                if current is not None:
                    writer.refuse_if_held(current.model, "restored")
                else:
                    writer.backups.copy_to_trash(
                        path, show, f"{ep}.{stamp(writer.clock())}.unreadable{os.path.splitext(path)[1]}", folder)
                    writer.backups.drop_live_links(show, ep, path, folder, kept)
            # the version the log is committed at: the file's, or if it cannot be read, the log's last
            committed = current.model.version if current is not None else max(
                eventlog.last_logged_version(paths.events, dir_fd=folder), 0)
            new = source.model.model_copy(update={"version": committed + 1, "updated_at": writer.clock(),
                                                  "lease": None})
            event = {"kind": "restore", "message": f"restored backup {backup} (version {chosen.version})",
                     "from_stage": current.model.stage if current is not None else None, "to_stage": new.stage}
            return writer.commit(path, current, new, event, committed=committed, template=source,
                                 replaced=raw, folder=folder)

    def readable(self, show: str, ep: str) -> bool:
        """False if the episode's file cannot be read (damaged, invalid, a newer schema)."""
        try:
            self.writer.load(show, ep)
            return True
        except (CorruptFileError, ValidationError, SchemaVersionError):
            return False
        except StatekitError:
            return True  # gone, or not ours to judge: nothing to protect

    def gc_backups(self, *, backups_older_than: timedelta, dry_run: bool = False) -> list[Removed]:
        """Remove backups saved more than ``backups_older_than`` ago (see ``Store.gc``)."""
        if not isinstance(backups_older_than, timedelta) or backups_older_than.total_seconds() < 0:
            raise ValidationError(f"backups_older_than must be a non-negative timedelta, got {backups_older_than!r}")
        writer = self.writer
        try:
            cutoff = (writer.clock() - backups_older_than).timestamp()
        except OverflowError:
            raise ValidationError(f"backups_older_than is too large: {backups_older_than}",
                                  hint="give an age in days, e.g. 7d") from None
        base = EPISODE_BACKUPS
        with writer.folders.open_existing(base) as top:  # UnsafePathError on a symlink
            shows = subdirs(top) if top is not None else []
        removed = []
        for show in shows:
            with writer.folders.open_existing((*base, show)) as show_folder:
                eps = subdirs(show_folder) if show_folder is not None else []
            for ep in eps:
                parts = (*base, show, ep)
                directory = "/".join((writer.root, *parts))
                keep_one = not self.readable(show, ep)
                with writer.folders.open_existing(parts) as folder:
                    found = [] if folder is None else [
                        (name, os.stat(name, dir_fd=folder, follow_symlinks=False))
                        for _version, name in sorted(backup_versions(os.listdir(folder)), reverse=True)]
                for index, (name, st) in enumerate(found):
                    path = os.path.join(directory, name)
                    if (keep_one and index == 0) or st.st_mtime >= cutoff:
                        continue
                    if not dry_run:
                        with writer.locks.episode(show, ep), writer.folders.open_existing(parts) as folder:
                            if folder is None or not diskio.remove_file(writer.disk, path, "remove backup",
                                                                        dir_fd=folder):
                                continue
                    removed.append(Removed(os.path.relpath(path, writer.root), st.st_size, "old backup"))
        return removed

    def repair(self, *, dry_run: bool = False, progress: Progress | None = None) -> RepairReport:
        """Fix what can be fixed without a person (see ``Store.repair``)."""
        writer = self.writer
        report = RepairReport(dry_run=dry_run)
        act = report.actions.append
        for stale in diskio.temp_files(writer.root, dir_fd=writer.folders.root_fd):  # statekit.yaml's own
            act(f"remove temp file {os.path.relpath(stale, writer.root)}")
            if not dry_run:
                writer.disk.unlink(stale, dir_fd=writer.folders.root_fd)
        work = []
        for show in self.shows.ids():
            with writer.locks.show(show), writer.folders.open_existing(("shows", show)) as folder:
                for stale in diskio.temp_files(os.path.join(writer.root, "shows", show), dir_fd=folder) if folder else []:
                    act(f"remove temp file {os.path.relpath(stale, writer.root)}")
                    if not dry_run:
                        writer.disk.unlink(stale, dir_fd=folder)
            work += [(show, ep) for ep in subdirs(os.path.join(writer.root, "shows", show, "episodes"))]
        for done, (show, ep) in enumerate(work, 1):
            try:
                check_id(ep, "episode id")
                self._repair_episode(show, ep, report)
            except StatekitError as exc:
                report.problems.append(f"{show}/{ep}: {exc.one_line()}")
            if progress is not None:
                progress(done, len(work))
        if dry_run:
            return report
        try:
            synced = self.sync()
        except (IndexUnavailableError, OSError) as exc:
            act(f"rebuild the index ({exc})")
            self.rebuild()
            return report
        report.synced = synced
        for key in synced.added + synced.reindexed:
            act(f"index {key} again")
        for key in synced.removed:
            act(f"drop {key} from the index (its files are gone)")
        for change in synced.changed:
            act(f"adopt the hand edit of {change['episode']} ({', '.join(change['fields'])})")
        report.problems.extend(p.message for p in synced.rejected)
        found = self.verify().problems
        drift = [p for p in found if p.kind == "index"]
        if drift:  # what sync cannot mend (e.g. the stage totals): build the index again from the files
            act(f"rebuild the index ({drift[0].message}" + (f", and {len(drift) - 1} more" if len(drift) > 1
                                                             else "") + ")")
            self.rebuild()
        # what no step above can mend (a damaged event log, a backup that cannot be read): say so
        for p in found:
            if p.kind != "index" and not any(p.message in q or (p.episode and q.startswith(p.episode + ":"))
                                             for q in report.problems):
                report.problems.append(p.message)
        return report

    def _refused_edit(self, show: str, ep: str, path: str) -> str | None:
        """Why a readable pending edit cannot be adopted (an illegal move), or None."""
        writer = self.writer
        try:
            with writer.episode_folder(show, ep) as folder:
                _path, parsed = writer.load(show, ep, folder)
                ledger = writer.ledger_of(path, parsed, folder)
                if ledger is None or not ledger.pending:
                    return None
                committed = Episode.model_validate(writer.committed_data(show, ep, ledger.version, folder))
        except (StatekitError, ValueError):
            return None
        refusal = refuse_move(writer.pipeline, committed.stage, parsed.model.stage, committed.approvals) \
            if parsed.model.stage != committed.stage else None
        return None if refusal is None else (f"the hand edit moves {committed.stage!r} -> {parsed.model.stage!r}: "
                                             f"{refusal.message}")

    def _repair_episode(self, show: str, ep: str, report: RepairReport) -> None:
        writer = self.writer
        act = report.actions.append
        dry_run = report.dry_run
        key = f"{show}/{ep}"
        paths = writer.paths(show, ep)
        with writer.locks.episode(show, ep):
            # its own folder, and its copies in migrate's backup folders (written under the same lock)
            with writer.folders.open_existing((".statekit", "backups")) as backups:
                migrates = [n for n in subdirs(backups) if n.startswith("migrate-")] if backups is not None else []
            places: list[tuple[tuple[str, ...], str | None]] = [(("shows", show, "episodes", ep), "checkpoints")]
            places += [((".statekit", "backups", name, "shows", show, "episodes", ep), None) for name in migrates]
            for parts, nested in places:
                directory = "/".join((writer.root, *parts))
                with writer.folders.open_existing(parts) as folder:  # no symlinked folder on the way
                    if folder is None:
                        continue
                    for stale in diskio.temp_files(directory, nested, dir_fd=folder):
                        act(f"remove temp file {os.path.relpath(stale, writer.root)}")
                    if not dry_run:
                        diskio.remove_temp_files(writer.disk, directory, nested, dir_fd=folder)
        path = next((p for p in paths.files if os.path.lexists(p)), None)
        readable = False
        if path is not None:
            try:
                writer.parse_episode(path, diskio.read_file(path) or b"", show, ep)
                readable = True
            except SchemaVersionError as exc:
                newer = type(exc.found) is int and exc.found > exc.supported
                if newer or not writer.chained:
                    report.problems.append(f"{key}: {exc.one_line()}")  # a newer statekit's file: not ours to fix
                    return
                reason = exc.one_line()  # a damaged schema_version: the log has the committed version
            except (CorruptFileError, ValidationError) as exc:
                reason = exc.one_line()
            else:
                reason = ""
        else:
            reason = "the episode file is missing"
        if readable and writer.chained and path is not None:
            refusal = self._refused_edit(show, ep, path)
            if refusal is not None:
                readable, reason = False, refusal
        if not readable and writer.chained:  # the log holds the committed version: put it back from there
            try:
                with writer.episode_folder(show, ep) as folder:
                    chained = writer.log_ledger(show, ep, folder) is not None
            except StatekitError:
                chained = False
            if chained:
                act(f"put back the committed version of {key} from its log: {reason}")
                if dry_run:
                    return
                try:
                    revert_episode(writer, show, ep, kind="repair", only_pending=False)
                    readable = True
                except (CorruptFileError, ValidationError) as exc:  # the log itself is damaged: backups next
                    report.problems.append(f"{key}: the log could not rebuild the committed version "
                                           f"({exc.one_line()}); trying the backups")
        if not readable:
            newest = writer.newest_valid_backup(show, ep)
            if newest is None:
                report.problems.append(f"{key}: {reason}; no valid backup to restore, fix the file by hand")
                return
            act(f"restore {key} from backup {newest.number} (version {newest.version}): {reason}")
            if not dry_run:
                self.restore(show, ep, newest.number)
            else:
                return
        with writer.locks.episode(show, ep), writer.episode_folder(show, ep) as folder:
            _, parsed = writer.load(show, ep, folder)
            tail = eventlog.uncommitted_tail(paths.events, parsed.model.version, dir_fd=folder)
            if tail:
                act(f"drop the uncommitted event tail of {key} ({tail} bytes of events.jsonl)")
                if not dry_run:
                    packed.inflate(writer.disk, paths.events, dir_fd=folder)  # a compressed log: plain again
                    size = os.stat("events.jsonl", dir_fd=folder, follow_symlinks=False).st_size
                    eventlog.drop_tail(writer.disk, paths.events, size - tail, dir_fd=folder)
                    parsed.log_size = None
            for stage in sorted(parsed.model.checkpoints.keys() | set(checkpoint_stages(paths.dir))):
                cp = paths.checkpoint(stage)
                try:
                    read_checkpoint(cp)
                except (CorruptFileError, SchemaVersionError) as exc:
                    act(f"move the damaged checkpoint {os.path.relpath(cp, writer.root)} to the trash: "
                        f"{exc.one_line()}")
                    if not dry_run:
                        target = (f"{writer.root}/.statekit/trash/{show}/{ep}.{stamp(writer.clock())}"
                                  f".checkpoint.{stage}.json")
                        with writer.folders.open(("shows", show, "episodes", ep, "checkpoints")) as checkpoints, \
                                writer.folders.open(trash_parts(show), create=True) as trash:
                            damaged = packed.existing(cp, dir_fd=checkpoints) or cp  # compressed by retention
                            diskio.move(writer.disk, damaged, target + damaged[len(cp):], src_dir_fd=checkpoints,
                                        dst_dir_fd=trash)


def revert_episode(writer: Writer, show: str, ep: str, *, kind: str = "revert", only_pending: bool = True) -> Episode:
    """Put the last committed version back as the episode's file, rebuilt from its
    chained log (``writes.Writer.committed_data``), as a new version with one event
    (``kind``); the person's file goes to the trash. Comments and layout come from
    the newest valid backup when there is one. ``only_pending``: refuse when the
    file is committed already (``statekit revert``)."""
    check_id(show, "show id")
    check_id(ep, "episode id")
    paths = writer.require_folders(show, ep)
    with writer.locks.episode(show, ep), writer.episode_folder(show, ep) as folder:
        ledger = writer.log_ledger(show, ep, folder)
        if ledger is None:
            raise ValidationError(f"{show}/{ep}: its log has no chain (it was written before the ledger), so the "
                                  "committed version cannot be rebuilt from it", show_id=show, episode_id=ep,
                                  hint=f"'statekit restore {show}/{ep}' puts a backup back; 'statekit migrate' "
                                       "seals older logs")
        path = next((p for p in paths.files if diskio.lexists(p, dir_fd=folder)), paths.files[0])
        raw = diskio.read_file(path, dir_fd=folder)
        if raw is not None and only_pending:
            try:
                parsed = writer.parse_episode(path, raw, show, ep)
            except (CorruptFileError, ValidationError, SchemaVersionError):
                parsed = None
            if parsed is not None:
                state = writer.ledger_of(path, parsed, folder)
                if state is not None and not state.pending:
                    raise ValidationError(f"{show}/{ep} has no pending edit to revert: its file is the committed "
                                          f"version {state.version}", show_id=show, episode_id=ep,
                                          hint=f"'statekit restore {show}/{ep}' puts an older version back")
        data = writer.committed_data(show, ep, ledger.version, folder)
        ledger.data = data
        committed = Episode.model_validate(data)
        if raw is not None:  # the person's file is kept, never erased
            writer.backups.copy_to_trash(path, show, f"{ep}.{stamp(writer.clock())}.edit{os.path.splitext(path)[1]}",
                                         folder)
            with writer.folders.open_existing(backup_parts(show, ep)) as kept:
                if kept is not None:
                    writer.backups.drop_live_links(show, ep, path, folder, kept)
        newest = writer.newest_valid_backup(show, ep)
        template = None
        if newest is not None and os.path.splitext(newest.path)[1] == os.path.splitext(path)[1]:
            template = writer.parse_episode(newest.path, diskio.read_file(newest.path) or b"", show, ep)
        new = committed.model_copy(update={"version": ledger.version + 1, "updated_at": writer.clock()})
        event = {"kind": kind, "message": f"put back committed version {ledger.version}"
                 + (" (the file was edited by hand)" if raw is not None else " (the file was missing)")}
        return writer.commit(path, None, new, event, committed=ledger.version, template=template, replaced=raw,
                             folder=folder, ledger=ledger, base=data)
