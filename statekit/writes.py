"""The write path: the one place an episode file is written.

Every writer (advance, update, approve, checkpoints, assets, runs, recovery,
adoption of hand edits, restore, migrate, import, create) calls ``Writer``:

1. ``write``: lock the episode (``locks.Locks.episode``), hold its folder
   open (walked from the root, never through a symlink), read the committed
   file (``load``, cached by its bytes);
2. check the expected version, then let the caller's pure ``change`` decide
   (the stage check is the pipeline's ``refuse_move``, called there);
3. hold the store's unique values the change takes (``unique_claims``);
4. ``commit``: append the event (fsynced), then replace the file atomically
   and durably (its old bytes kept as a backup), then the parse cache and
   the index (``index_quietly``: a failure there is logged, ``sync`` mends).

The event goes first, so a crash leaves at most an event newer than the file
(an uncommitted tail, dropped by the next write) and never a file change
without its event.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import eventlog, graphs, patches
from . import files as diskio
from . import unique as uniq
from .backups import Backup, Backups
from .codecs import CODECS, Parsed, line_of
from .errors import (
    CorruptFileError,
    DuplicateError,
    EpisodeExistsError,
    EpisodeNotFoundError,
    IndexUnavailableError,
    NotReadyError,
    SchemaVersionError,
    ShowNotFoundError,
    StatekitError,
    UnknownStageError,
    ValidationError,
    VersionConflictError,
)
from .eventlog import Ledger
from .folders import Folders, make_folder, real_dirs
from .ids import check_id
from .index.rows import episode_row, event_row, event_rows_of
from .layout import EpisodePaths, episode_parts
from .locks import Locks
from .models import (
    EVENT_SCHEMA,
    NOT_UTF8_HINT,
    UNCHAINED_EVENT_SCHEMA,
    Episode,
    StoreConfig,
    find_bad_text,
)
from .parsing import parse_episode, sha256, stamp
from .pending import Ledgers
from .pipeline import Pipeline, ready_for

if TYPE_CHECKING:
    from .index import Index

log = logging.getLogger("statekit")

CACHE_SIZE = 4096
"""Parsed files (and path sets) kept in memory, newest used last."""

NO_CLAIMS: AbstractContextManager[None] = nullcontext()
"""``unique_claims`` when the change takes no unique value (no generator per write)."""

Change = Callable[[Episode, datetime], "tuple[Episode, dict[str, Any]] | None"]
"""``change(current, now)``: the new episode and its event's fields, or None for "nothing to do"."""


class Writer(Ledgers):
    """The write path of one store (see the module's text for the steps).

    ``open_index(writer)`` opens the index on first use (the store passes
    ``index.maintenance.open_index``, which may rebuild it from the files
    through this writer's reading methods)."""

    def __init__(self, config: StoreConfig, folders: Folders, locks: Locks, backups: Backups,
                 clock: Callable[[], datetime], open_index: Callable[[Writer], Index]) -> None:
        self.root = folders.root
        self.config = config
        self.folders = folders
        self.locks = locks
        self.backups = backups
        self.clock = clock
        self.disk = folders.disk
        self.codec = CODECS["." + config.format]
        self._open_index = open_index
        self._index: Index | None = None
        self._cache: OrderedDict[str, Parsed] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._path_cache: dict[tuple[str, str], EpisodePaths] = {}
        self.graphs = graphs.History(self.root)  # the graphs the store ran under (events name theirs)
        self.after_commit: list[Callable[[dict[str, Any], Episode], None]] = []
        """Called with each committed event's record and the new episode, after
        the index write (alerts, the event stream); one that raises is logged."""
        self._fences: contextvars.ContextVar[tuple[Callable[[], None], ...]] = contextvars.ContextVar(
            "statekit_fences", default=())

    @property
    def pipeline(self) -> Pipeline:
        return self.config.pipeline

    # --- the index -------------------------------------------------------------

    @property
    def index(self) -> Index:
        """The SQL index, opened (and brought up to date) on first use."""
        if self._index is None:
            index = self._open_index(self)
            if index.dialect == "sqlite":  # writers of one SQLite index wait for each other in the kernel
                index.write_gate = self.locks.gate("index-writers.lock", "the index's writers")
            self._index = index
        return self._index

    def close_index(self) -> None:
        if self._index is not None:
            self._index.close()

    def index_quietly(self, what: str, **changes: Any) -> None:
        """Update the index after the files are durable. A failure here never
        touches the files and is not the caller's failure: it is logged, and
        the next ``sync`` repairs the index."""
        try:
            self.index.write(**changes)
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError  # imported when needed, not on every write

            if not isinstance(exc, (IndexUnavailableError, SQLAlchemyError, OSError, TypeError, ValueError,
                                    OverflowError)):
                raise
            log.warning("statekit: the index missed %s (%s); run 'statekit sync' to repair it", what, exc)

    @contextmanager
    def fenced(self, check: Callable[[], None]) -> Iterator[None]:
        """Within the block, every commit calls ``check()`` right before its
        rename (a run's lease still held); its error aborts the commit."""
        token = self._fences.set((*self._fences.get(), check))
        try:
            yield
        finally:
            self._fences.reset(token)

    def fence(self) -> None:
        """Right before a commit's rename: the locks held are still held (a
        server's lock dies with its connection), and the block's fences pass."""
        self.locks.fence()
        for check in self._fences.get():
            check()

    # --- paths and checks --------------------------------------------------------------

    def paths(self, show: str, ep: str) -> EpisodePaths:
        """Every path of one episode, computed once (ids are already checked)."""
        key = (show, ep)
        paths = self._path_cache.get(key)
        if paths is None:
            if len(self._path_cache) >= CACHE_SIZE:
                self._path_cache.clear()
            paths = self._path_cache[key] = EpisodePaths(self.root, show, ep, self.codec.suffix)
        return paths

    def exists(self, show: str, ep: str) -> bool:
        """True if the episode has a file (in either format)."""
        return any(os.path.lexists(p) for p in self.paths(show, ep).files)

    def check_stage(self, stage: str) -> str:
        check_id(stage, "stage")
        if stage not in self.pipeline.stages:
            raise UnknownStageError(
                f"unknown stage {stage!r} in pipeline {self.pipeline.name!r}", stages=list(self.pipeline.stages),
                stage=stage,
            )
        return stage

    def missing(self, show: str, ep: str) -> StatekitError:
        """The error for an episode that is not there (or whose show is not)."""
        if not self.folders.exists(("shows", show)):
            return ShowNotFoundError(f"show {show!r} not found", show_id=show)
        return EpisodeNotFoundError(f"episode {show}/{ep} not found", show_id=show, episode_id=ep)

    def require_folders(self, show: str, ep: str) -> EpisodePaths:
        """The episode's paths; its error if its folders are not there."""
        paths = self.paths(show, ep)
        if not real_dirs(paths.chain):
            raise self.missing(show, ep)
        return paths

    def lease_live(self, model: Episode, now: datetime | None = None) -> bool:
        """True if the run the episode file names still holds its lease.

        The index's lease row decides while there is one (renewed in the
        background, judged by the database's clock; a row of another run means
        this one was taken over); without one, the expiry the file records."""
        lease = model.lease
        if lease is None:
            return False
        now = now or self.clock()
        try:
            holder, db_now = self.index.leases.holder(model.show_id, model.episode_id, now)
        except IndexUnavailableError as exc:
            log.warning("statekit: judging %s's lease by its file (%s)", model.key, exc.one_line())
            return now < lease.expires_at
        if holder is None:
            return db_now < lease.expires_at
        return holder.run_id == lease.run_id and holder.alive

    def refuse_if_held(self, model: Episode, what: str, now: datetime | None = None) -> None:
        """``NotReadyError`` if a live stage run holds the episode."""
        lease = model.lease
        if lease is not None and self.lease_live(model, now):
            raise NotReadyError(
                f"{model.key} is being run ({model.stage}) by {lease.owner} until {lease.expires_at.isoformat()}; "
                f"it cannot be {what} meanwhile", reason="leased", show_id=model.show_id,
                episode_id=model.episode_id, stage=model.stage,
                hint="wait for the run to finish, or for its lease to expire")

    def refuse_if_leased(self, show: str, ep: str, what: str) -> None:
        """``refuse_if_held`` for the episode's file (a damaged file holds no
        lease anyone could honour: it does not refuse)."""
        try:
            model = self.load(show, ep)[1].model
        except (CorruptFileError, ValidationError, SchemaVersionError):
            return
        self.refuse_if_held(model, what)

    # --- reading ----------------------------------------------------------------

    def cached(self, path: str, raw: bytes) -> Parsed | None:
        """The parse of ``path`` if its bytes are still ``raw``."""
        with self._cache_lock:
            hit = self._cache.get(path)
            if hit is not None and hit.raw == raw:
                self._cache.move_to_end(path)
                return hit
        return None

    def remember(self, path: str, parsed: Parsed) -> None:
        with self._cache_lock:
            self._cache[path] = parsed
            self._cache.move_to_end(path)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    def forget(self, prefix: str) -> None:
        with self._cache_lock:
            for path in [p for p in self._cache if p.startswith(prefix)]:
                del self._cache[path]

    def parse_episode(self, path: str, raw: bytes, show: str, ep: str, *, model: bool = True) -> Parsed:
        """``parsing.parse_episode`` with this store's pipeline and clock."""
        return parse_episode(path, raw, show, ep, self.pipeline, self.clock(),
                             retired=lambda: self.graphs.retired_stages(self.pipeline), model=model)

    def episode_folder(self, show: str, ep: str) -> _Folder:
        """The episode's folder, held open for a ``with`` block; the episode is missing if it is."""
        return _Folder(self, show, ep)

    def load(self, show: str, ep: str, folder: int | None = None) -> tuple[str, Parsed]:
        """Path and parsed content of an episode file (cached by its bytes),
        read in its ``folder`` (held open by the caller, or opened here)."""
        if folder is None:
            with self.episode_folder(show, ep) as opened:
                return self.load(show, ep, opened)
        paths = self.paths(show, ep)
        for path in paths.files:
            raw = diskio.read_file(path, dir_fd=folder)
            if raw is not None:
                break
        else:
            raise self.missing(show, ep)
        parsed = self.cached(path, raw)
        if parsed is None:
            try:
                parsed = self.parse_episode(path, raw, show, ep)
            except (CorruptFileError, ValidationError) as exc:
                raise self._with_backup_hint(exc, show, ep) from None
            self.remember(path, parsed)
        return path, parsed

    def get(self, show: str, ep: str) -> Episode:
        """The episode's committed version (ids checked; no lock): as its file holds
        it, or, while a person's edit of the file is pending, as the log rebuilds it
        (``Episode.pending`` says so)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        if self.chained:
            return self.committed_view(show, ep)
        return self.load(show, ep)[1].model  # type: ignore[no-any-return]

    def backups_of(self, show: str, ep: str) -> list[Backup]:
        """The episode's backups, newest first, each checked (see ``Backups.listing``)."""
        found = self.backups.listing(self.paths(show, ep), show, ep, self.parse_episode)
        if found is None:
            self.require_folders(show, ep)
            return []
        return found

    def newest_valid_backup(self, show: str, ep: str) -> Backup | None:
        return self.backups.newest_valid(self.paths(show, ep), show, ep, self.parse_episode)

    def _with_backup_hint(self, exc: CorruptFileError | ValidationError, show: str, ep: str) -> StatekitError:
        """The read error, naming the newest backup that can be restored."""
        newest = self.newest_valid_backup(show, ep)
        exc.add_context(show_id=show, episode_id=ep)
        if newest is None:
            exc.extras.setdefault("backup", None)
            if self.chained:
                exc.hint = (f"{exc.hint + '; or ' if exc.hint else ''}run 'statekit revert {show}/{ep}' to put the "
                            "last committed version back; nothing was changed")
            return exc
        rel = os.path.relpath(newest.path, self.root)
        exc.message += f"; newest valid backup: {rel} (version {newest.version})"
        exc.extras["backup"] = rel
        exc.hint = (f"fix the file by hand, or run 'statekit restore {show}/{ep}' to put that backup back "
                    "('statekit repair' does it for every damaged episode); nothing was changed")
        if self.chained:
            exc.hint = (f"fix the file by hand, or run 'statekit revert {show}/{ep}' to put the last committed "
                        "version back ('statekit repair' does it for every damaged episode); nothing was changed")
        return exc

    # --- writing --------------------------------------------------------------------

    def write(self, show: str, ep: str, change: Change, expected_version: int | None = None,
              before_commit: Callable[[Episode], None] | None = None, *, seal: bool = False) -> Episode:
        """Apply ``change`` under the episode's lock and commit it.

        ``change(current, now)`` returns the new episode and its event fields,
        or None for "nothing to do". Raises before anything is written if the
        version or the move is refused. ``before_commit(new)`` runs under the
        lock right before the commit (a checkpoint file, a migration's copy).
        ``seal``: the event starts a chain (``migrate``, moving a store to the ledger).
        """
        check_id(show, "show id")
        check_id(ep, "episode id")
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            raise ValidationError(f"expected_version must be a non-negative integer, got {expected_version!r}")
        with self.locks.episode(show, ep), self.episode_folder(show, ep) as folder:
            path, current = self.load(show, ep, folder)
            ledger = self.ledger_of(path, current, folder) if self.chained else None
            version = ledger.version if ledger is not None else current.model.version
            if expected_version is not None and version != expected_version:
                raise VersionConflictError(
                    f"episode {show}/{ep} is at version {version}, not {expected_version}",
                    expected=expected_version, actual=version, show_id=show, episode_id=ep,
                )
            if ledger is not None and ledger.pending:  # a person's edit: adopted first, or the write refused
                current, ledger, _fields = self._adopt_pending(path, current, ledger, folder)
            model: Episode = current.model
            outcome = change(model, self.clock())
            if outcome is None:
                return model
            new, event = outcome
            with self.unique_claims(show, ep, model.metadata, new.metadata):
                if before_commit is not None:
                    before_commit(new)
                return self._commit(path, current, new, event, folder=folder, ledger=ledger,  # type: ignore[no-any-return]
                                    seal=seal).model

    def create(self, model: Episode, event: dict[str, Any]) -> Episode:
        """Write a new episode (the caller holds its show's lock). A create
        that fails leaves no folder it made behind (an empty episode folder,
        or a new show's), so a failed create changes nothing."""
        show, ep = model.show_id, model.episode_id
        paths = self.paths(show, ep)
        if self.folders.exists(("shows", show, "episodes")):  # refuses a symlink; folders come later
            made = [] if os.path.lexists(paths.dir) else [paths.dir]
        else:
            made = [d for d in paths.chain[1:] if not os.path.lexists(d)]
        try:
            with self.locks.episode(show, ep):
                if self.exists(show, ep):
                    raise EpisodeExistsError(f"episode {show}/{ep} already exists", show_id=show, episode_id=ep)
                with self.unique_claims(show, ep, None, model.metadata):  # before any folder is made
                    self.backups.to_trash(show, ep, stamp(self.clock()))  # left by an episode deleted by hand
                    with self.folders.open(episode_parts(show, ep)[:-1], create=True) as parent:
                        folder, fresh = make_folder(self.disk, parent, paths.dir)
                        try:
                            named = self._sync_new_folder(parent, os.path.dirname(paths.dir),
                                                          fresh or paths.dir in made)
                            try:
                                return self.commit(paths.files[0], None, model, event, folder=folder, named=named,
                                                   fresh=fresh)
                            finally:
                                if named is not None:  # never left syncing a descriptor the block closes
                                    named.wait()
                        finally:
                            os.close(folder)
        except BaseException:
            self._undo_create_dirs(show, ep, made)
            raise

    def _sync_new_folder(self, parent: int, directory: str, made: bool) -> diskio.Background | None:
        """The new episode folder's name made durable in its ``parent``: on a helper thread,
        alongside the event's and the file's own fsyncs (the commit waits for it before its
        rename, so a failure still aborts the create), or at once (a disk that does not
        overlap its syncs). None: nothing to wait for."""
        if not made:
            return None
        if not self.disk.overlap_syncs:
            diskio.sync_folder(self.disk, parent, directory)
            return None
        return diskio.Background(lambda: diskio.sync_folder(self.disk, parent, directory))

    def _undo_create_dirs(self, show: str, ep: str, made: list[str]) -> None:
        """Remove the folders a failed create made (the caller holds the show
        lock, so no other create or delete is in them). The episode folder
        holds at most an event that no episode file committed (its append
        went through, the file's rename did not): it goes too. Best effort."""
        if self.exists(show, ep):
            return  # the episode was written after all: nothing to undo
        episode_dir = self.paths(show, ep).dir
        for directory in reversed(made):
            parts = tuple(directory[len(self.root) + 1:].split("/"))
            try:  # in folders walked from the root: a symlink swapped in meanwhile is refused, not followed
                with self.folders.open(parts[:-1]) as parent:
                    if directory == episode_dir:
                        with self.folders.open(parts) as folder:
                            for name in os.listdir(folder):
                                if name == "events.jsonl" or (name.startswith(diskio.TEMP_PREFIX)
                                                              and name.endswith(diskio.TEMP_SUFFIX)):
                                    os.unlink(name, dir_fd=folder)
                    os.rmdir(parts[-1], dir_fd=parent)
            except FileNotFoundError:
                continue  # the create failed before it made this folder
            except (OSError, StatekitError) as exc:
                log.warning("statekit: a failed create of %s/%s left the folder %s (%s)", show, ep, directory, exc)
                return

    def commit(self, path: str, current: Parsed | None, new: Episode, event: dict[str, Any],
               committed: int | None = None, template: Parsed | None = None,
               replaced: bytes | None = None, *, folder: int, ledger: Ledger | None = None,
               base: dict[str, Any] | None = None, named: diskio.Background | None = None,
               fresh: bool = False) -> Episode:
        """``_commit``, returning the new episode (see there)."""
        return self._commit(path, current, new, event, committed, template, replaced, folder=folder,  # type: ignore[no-any-return]
                            ledger=ledger, base=base, named=named, fresh=fresh).model

    def _commit(self, path: str, current: Parsed | None, new: Episode, event: dict[str, Any],
                committed: int | None = None, template: Parsed | None = None,
                replaced: bytes | None = None, *, folder: int, ledger: Ledger | None = None,
                base: dict[str, Any] | None = None, seal: bool = False,
                named: diskio.Background | None = None, fresh: bool = False) -> Parsed:
        """Event (durable) then file (atomic, durable), then the cache and the index.
        The caller holds the episode's lock.

        ``folder``: the episode's folder, held open (every write acts in it).
        ``committed``: the version the log is at, when it is not the file's
        (adopting a hand edit that changed ``version``). ``template``: the
        text whose comments and layout to keep, if not ``current``'s.
        ``replaced``: the bytes of a file there that could not be read (no
        ``current``): a write that fails puts them back. In a chained store
        the event carries ``prev`` (``ledger.line_hash``) and the patch from
        ``base`` (the committed data; by default ``ledger``'s or ``current``'s),
        or the whole data (``doc``) when the log has no chain yet. ``named``: a new folder's
        name being synced into its parent (a create): durable before the rename too. ``fresh``:
        ``folder`` was made by this create, under its locks (empty: no leftovers to look for,
        no log yet)."""
        directory = path[:path.rfind("/")]  # (os.path's dirname and splitext, for an episode file's path)
        codec = CODECS[path[path.rfind("."):]]
        data = new.model_dump(mode="json")
        if committed is None:
            committed = current.model.version if current is not None else 0
        if event.get("cost") is not None and not event.get("stage"):
            # money is spent in the stage the episode is in when it is recorded (an advance: the stage it leaves)
            event = {**event, "stage": current.model.stage if current is not None else new.stage}
        try:
            written = codec.dump(data, template or current)
            raw = written.raw
            record = {
                "schema_version": EVENT_SCHEMA if self.chained or seal else UNCHAINED_EVENT_SCHEMA,
                "version": new.version,
                "at": data["updated_at"],
                "show_id": new.show_id,
                "episode_id": new.episode_id,
                "graph": graphs.graph_hash(self.pipeline),
                **{k: v for k, v in event.items() if v is not None},
                "sha256": sha256(raw),
            }
            if self.chained or seal:
                record.update(self._chain_fields(path, current, data, ledger, base, folder, committed))
            line = eventlog.event_line(record)
        except (UnicodeEncodeError, TypeError):  # orjson says TypeError
            # text that bypassed the models' checks: refused here, before anything is written
            where = find_bad_text(data, "episode") or find_bad_text(event, "event")
            if where is None:
                raise
            raise ValidationError(f"{new.key}: {where}", show_id=new.show_id, episode_id=new.episode_id,
                                  hint=NOT_UTF8_HINT) from None
        if not fresh:  # an interrupted write's leftovers
            diskio.remove_temp_files(self.disk, directory, nested="checkpoints", dir_fd=folder)
        known = current.log_size if current is not None and current.model.version == committed else None
        log_path = directory + "/events.jsonl"
        sizes: list[int] = []

        appended: eventlog.Appended | None = None

        def sync_folder() -> None:
            diskio.sync_folder(self.disk, folder, directory)

        def sync() -> None:  # the line is written: its fsync runs alongside the file's; done before the rename
            new_log = appended.before == 0  # type: ignore[union-attr]  # its name durable before the file's too
            # the folder's fsync is issued beside the log's and the file's, not after the log's (one
            # after the other, each would be its own journal commit and disk flush)
            beside = diskio.Background(sync_folder) if new_log and self.disk.overlap_syncs else None
            try:
                appended.sync()  # type: ignore[union-attr]
            except BaseException:
                if beside is not None:  # never left syncing a descriptor the caller closes
                    beside.wait()
                raise
            if beside is not None:
                beside.result()
            elif new_log:
                sync_folder()
            if named is not None:  # (an error here aborts the write before its rename, as the append's does)
                named.result()

        keep, backups = self.backups.keep_path(path, current)
        previous = current.raw if current is not None else replaced
        taken: list[str] = []
        try:
            # the line is written here, on this thread (a helper running Python beside it costs the GIL's
            # handoffs); only its fsync goes to the helper, overlapping the file's own
            appended = eventlog.write_event(self.disk, log_path, line, committed, known, dir_fd=folder,
                                            committed_end=ledger.end if ledger is not None else None,
                                            new=fresh)
            sizes.append(appended.after)
            st = diskio.atomic_write(self.disk, path, raw, dir_fd=folder, alongside=sync, keep=keep,
                                     keep_dir_fd=backups, previous=previous, created=previous is None,
                                     fence=self.fence,
                                     recycle=self.backups.spare(keep, current.model.version, backups)  # type: ignore[union-attr]
                                     if keep is not None else None, recycled=taken)
            if keep is not None and backups is not None:
                self.backups.rotate(keep, current.model.version, backups,  # type: ignore[union-attr]
                                    spare_taken=bool(taken))
        finally:
            if appended is not None:
                appended.close()  # (synced and closed already, unless the write stopped first)
            if backups is not None:
                os.close(backups)
        return self._after_rename(path, current, new, written, data, record, line, sizes, st, committed,
                                  log_path, folder, seal, adopting=ledger is not None and ledger.pending)

    def _after_rename(self, path: str, current: Parsed | None, new: Episode, written: Parsed,
                      data: dict[str, Any], record: dict[str, Any], line: bytes, sizes: list[int],
                      st: os.stat_result, committed: int, log_path: str, folder: int, seal: bool, *,
                      adopting: bool) -> Parsed:
        """The new file is durable: the parse cache, the index, the hooks. ``adopting``: the
        write adopts a pending hand edit (``current`` is the edited file)."""
        written.model = new
        written.log_size = sizes[0]
        written.sha256 = record["sha256"]
        if self.chained or seal:
            written.log_hash = eventlog.line_hash(line)
            written.dumped = data
        self.remember(path, written)
        row = episode_row(
            new, data, self.pipeline, path=path[len(self.root) + 1:], size=st.st_size,
            mtime_ns=st.st_mtime_ns, sha256=record["sha256"], checked_at_ns=time.time_ns(),
            position=None,  # type: ignore[arg-type]
        )
        if current is not None and not adopting:
            # what the index row holds if it is up to date (for a pending edit being adopted, the
            # row holds the committed version's stage and costs under the edited file's hash)
            was = current.model
            row["was"] = (current.sha256 or sha256(current.raw), was.stage, was.costs)
            if was.stage == new.stage:  # and its ready_for: the index's UPDATE then leaves it alone if it stays
                row["was"] += (ready_for(self.pipeline, was.stage, was.previous_stage, was.approvals,
                                         done=was.stage_done, hold=was.hold),)
        event_rows = [event_row(record)]
        if current is None and committed:
            # a restore over a file that could not be read: a rebuild meanwhile dropped the
            # episode, its earlier events too, from the index; they go back with this one
            try:
                event_rows = event_rows_of(eventlog.read_events(log_path, new.version, strict=False, dir_fd=folder))
            except (StatekitError, ValueError) as exc:
                log.warning("statekit: the index keeps only the newest event of %s (%s); run 'statekit sync'",
                            new.key, exc)
        self.index_quietly(f"{new.key} version {new.version}", rows=[row], event_rows=event_rows)
        for hook in self.after_commit:  # never fails the write: it is durable already
            try:
                hook(record, new)
            except Exception as exc:
                log.warning("statekit: a signal of %s version %s failed (%s)", new.key, new.version, exc)
        return written

    def _chain_fields(self, path: str, current: Parsed | None, data: dict[str, Any], ledger: Ledger | None,
                      base: dict[str, Any] | None, folder: int, committed: int) -> dict[str, Any]:
        """``prev`` and ``patch`` for a chained log; ``doc`` (and, sealing an older log,
        ``prev`` and ``log_sha256``) when the log has no chain yet. Only committed lines
        are sealed: an uncommitted tail (a create that stopped before its rename) is cut
        by the append, so the new line must not name it."""
        if ledger is not None:
            if base is None:
                base = ledger.data
            if base is None and current is not None and not ledger.pending:
                base = current.dumped if current.dumped is not None else current.model.model_dump(mode="json")
            if base is None:
                base = self.committed_data(data["show_id"], data["episode_id"], ledger.version, folder)
            return {"prev": ledger.line_hash, "patch": patches.diff(base, data)}
        log_path = os.path.dirname(path) + "/events.jsonl"
        old = eventlog.read_lines(log_path, committed, strict=False, dir_fd=folder) if committed else []
        if not old:
            return {"doc": data}
        return {"doc": data, "prev": eventlog.line_hash(old[-1][1]),
                "log_sha256": sha256(b"".join(raw for _event, raw in old))}

    # --- unique values ------------------------------------------------------------------

    def unique_claims(self, show: str, ep: str, before: Mapping[str, Any] | None, after: Mapping[str, Any],
                      edited: tuple[str, bytes] | None = None) -> AbstractContextManager[None]:
        """Hold the values of the store's unique keys that ``after`` (the
        episode's new metadata) takes and ``before`` did not, from the check to
        the end of the ``with`` block (the commit); ``DuplicateError`` if
        another episode has one. The caller holds the episode's lock.

        Touches: one lock file per bucket of the values
        (``.statekit/locks/unique/<hh>.lock``, taken in sorted order, always
        after the episode lock, so two writers never wait for each other in a
        circle), the index (who holds a value: ``unique_values``), and the file
        of each episode the index names (the truth: a stale index row never
        refuses a write, the other episode must hold the value in its file).

        What is guaranteed: two writes through statekit never commit the same
        value, whichever processes make them, and a hand edit that brings in
        a value another episode holds is refused when ``sync`` adopts it. Not
        caught here: a value that only an unsynced hand edit holds (the index
        does not know it yet; that edit is then refused by ``sync``), or one
        whose index write failed (logged; ``sync`` repairs it); ``verify``
        reports every duplicate on disk. ``edited``: path and bytes of the
        hand-edited file being adopted (a refusal names its path and line)."""
        keys = self.config.unique
        wanted = uniq.new_claims(keys, before, after) if keys else []
        if not wanted:
            return NO_CLAIMS
        return self._claims(show, ep, wanted, edited)

    @contextmanager
    def _claims(self, show: str, ep: str, wanted: list[uniq.Claim], edited: tuple[str, bytes] | None
                ) -> Iterator[None]:
        """``unique_claims`` for the values ``wanted``."""
        with ExitStack() as held:
            for bucket in sorted({c.bucket for c in wanted}):
                held.enter_context(self.locks.unique(bucket))
            for claim in wanted:
                other = self._holder(claim, show, ep)
                if other is not None:
                    where, path, line = f"{show}/{ep}", None, None
                    if edited is not None:
                        path, line = edited[0], line_of(edited[1], ("metadata", claim.key))
                        where = f"{path}:{line}" if line else path
                    raise DuplicateError(
                        f"{where}: metadata {claim.key} = {uniq.shown(claim.value)} is already used by episode "
                        f"{other} ({claim.key} is unique in statekit.yaml)",
                        key=claim.key, value=claim.value, other=other, show_id=show, episode_id=ep, path=path,
                        line=line)
            yield

    def _holder(self, claim: uniq.Claim, show: str, ep: str) -> str | None:
        """``SHOW/EP`` of another episode whose file holds ``claim``'s value, or None."""
        for other_show, other_ep in self.index.holders(claim.key, claim.sha256):
            if (other_show, other_ep) == (show, ep):
                continue
            try:
                metadata = self.load(other_show, other_ep)[1].model.metadata
            except StatekitError:
                continue  # gone, or unreadable: its file holds no value to refuse for
            if uniq.canonical(metadata.get(claim.key)) == claim.text:
                return f"{other_show}/{other_ep}"
        return None


class _Folder:
    """``Writer.episode_folder``'s ``with`` block (a plain context manager: every write takes one)."""

    __slots__ = ("_writer", "_show", "_ep", "_fd")

    def __init__(self, writer: Writer, show: str, ep: str) -> None:
        self._writer = writer
        self._show = show
        self._ep = ep
        self._fd: int | None = None

    def __enter__(self) -> int:
        writer = self._writer
        try:
            fd = self._fd = writer.folders.walk(episode_parts(self._show, self._ep))
        except FileNotFoundError:
            raise writer.missing(self._show, self._ep) from None
        return fd

    def __exit__(self, *_exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
