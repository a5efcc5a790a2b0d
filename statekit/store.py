"""The Store: the facade that composes a store's parts. It holds no rules.

Each public method checks nothing itself and delegates to the module whose
one job it is (see docs/ARCHITECTURE.md): ``writes`` (the one write path),
``episodes``, ``shows``, ``checkpoints``, ``assets``, ``runs``,
``recovery``, ``repair``, ``migrate``, ``queries`` and the index's
maintenance (``index.connect``, ``index.rebuild``, ``index.sync``, ``index.verify``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from . import graphs
from .assets import Assets
from .backups import Backup, Backups
from .bulk import Bulk, BulkReport
from .checkpoints import Checkpoints
from .config import CONFIG_FILE, pipeline_from, read_config, refuse_nesting, write_new_store
from .config import index_url as find_index_url
from .controls import Controls, Pause, Paused
from .episodes import UNSET, Episodes
from .errors import StoreExistsError, ValidationError
from .files import DISK, READ_ONLY_DISK, Disk, storage_error
from .folders import Folders
from .history import Change, History
from .locks import Locks
from .migrate import ImportReport, Migration, MigrationReport
from .models import (
    LEDGER_SCHEMA,
    PRE_LEDGER_SCHEMA,
    ClaimRefused,
    Episode,
    Event,
    IndexConfig,
    Show,
    StoreConfig,
    UploadRecord,
    utcnow,
)
from .objects import ObjectsReport, Removed
from .parsing import invalid
from .pipeline import Pipeline
from .queries import Queries
from .recovery import RecoverReport, Recovery
from .repair import Repair, RepairReport, revert_episode
from .retention import CompactReport, Retention, older_than_of
from .runs import Run, Runs
from .serverlocks import ServerLocks
from .shows import Shows
from .writes import Writer

if TYPE_CHECKING:
    from .cache import Cache as ResultCache
    from .index import Index
    from .index.scan import Progress, RebuildReport, SyncReport, VerifyReport
    from .signals.worker import Signals

__all__ = ["CONFIG_FILE", "Backup", "ImportReport", "MigrationReport", "RecoverReport", "RepairReport", "Run",
           "Store"]


def _open_index(url: str | None, writer: Writer) -> Index:
    from .index.connect import open_index

    return open_index(writer, url)


def _open_index_read_only(url: str | None, writer: Writer) -> Index:
    from .index.connect import open_read_only

    return open_read_only(writer, url)


class Store:
    """A store of episode files under one root. Open with ``Store.init`` or
    ``Store.open``; safe to share between threads and to run in many processes."""

    def __init__(self, root: str, config: StoreConfig, *, disk: Disk = DISK,
                 clock: Callable[[], datetime] | None = None, read_only: bool = False) -> None:
        self.root = root
        self.read_only = read_only
        """Opened with ``read_only``: nothing can be written (the dashboard's store)."""
        folders = Folders(root, READ_ONLY_DISK if read_only else disk)  # every folder below is reached from the root's fd, never through a symlink
        self.index_url = find_index_url(config)
        """The server index's URL (``index: {url}``, ``STATEKIT_INDEX_URL``); None: SQLite."""
        locks = Locks(folders, config.lock_timeout) if self.index_url is None else \
            ServerLocks(self.index_url, config.lock_timeout)
        self.writer = Writer(config, folders, locks, Backups(folders, config.backups),
                             clock or utcnow, partial(_open_index_read_only if read_only else _open_index, self.index_url))
        self.show_files = Shows(self.writer)
        self.episodes = Episodes(self.writer, self.show_files)
        self.checkpoints = Checkpoints(self.writer)
        self.assets = Assets(self.writer)
        self.recovery = Recovery(self.writer)
        self.controls = Controls(self.writer, self.show_files)
        self.runs = Runs(self.writer, self.checkpoints, self.assets, self.recovery, controls=self.controls)
        self.repairs = Repair(self.writer, self.show_files, sync=partial(_sync, self.writer, self.show_files),
                                  rebuild=partial(_rebuild, self.writer), verify=partial(_verify, self.writer))
        self.migration = Migration(self.writer, self.show_files, self.episodes)
        self.queries = Queries(self.writer, self.show_files, self.controls)
        self.versions = History(self.writer)
        self.retention = Retention(self.writer)
        self.bulk = Bulk(self.writer)
        self._result_cache: ResultCache | None = None
        self._cache_lock = threading.Lock()
        self._signals: Signals | None = None
        self._wire_signals()
        graphs.record(folders, config.pipeline, self.clock())  # the graph in force, kept for judging old moves

    def __repr__(self) -> str:
        return f"Store({self.root!r}, pipeline={self.pipeline.name!r}, format={self.config.format!r})"

    # --- the parts' settings --------------------------------------------------------

    @property
    def config(self) -> StoreConfig:
        return self.writer.config

    @config.setter
    def config(self, value: StoreConfig) -> None:
        self.writer.config = value
        self.writer.backups.keep = value.backups
        self.writer.locks.timeout = value.lock_timeout
        self._wire_signals()

    @property
    def signals(self) -> Signals:
        """The store's alerts and event stream (``statekit.signals``), made on first use."""
        if self._signals is None:
            from .signals.worker import Signals

            self._signals = Signals(self.writer)
        return self._signals

    def _wire_signals(self) -> None:
        """The post-commit hook, there only when alerts or events are configured (no cost otherwise)."""
        hooks = self.writer.after_commit
        on = not self.read_only and (self.config.alerts is not None or self.config.events is not None)
        if on and self.signals.committed not in hooks:
            hooks.append(self.signals.committed)
        elif not on and self._signals is not None and self._signals.committed in hooks:
            hooks.remove(self._signals.committed)

    @property
    def pipeline(self) -> Pipeline:
        return self.writer.pipeline

    @property
    def clock(self) -> Callable[[], datetime]:
        """The time every write stamps (UTC, timezone-aware); tests pass a fake one."""
        return self.writer.clock

    @clock.setter
    def clock(self, value: Callable[[], datetime]) -> None:
        self.writer.clock = value

    @property
    def disk(self) -> Disk:
        """The store's I/O seam (tests inject faults through it)."""
        return self.writer.disk

    # --- opening ------------------------------------------------------------

    @classmethod
    def init(
        cls,
        root: str | os.PathLike[str],
        pipeline: Pipeline | Mapping[str, Any] | str | os.PathLike[str] = "archive",
        format: str = "yaml",
        *,
        lock_timeout: float = 5.0,
        backups: int = 3,
        unique: Sequence[str] = (),
        ledger: bool = True,
        index_url: str | None = None,
        disk: Disk = DISK,
        clock: Callable[[], datetime] | None = None,
    ) -> Store:
        """Create a new store at ``root`` (created if missing) and open it.

        ``pipeline``: a preset name (``archive``, ``podcast``), a path to a YAML
        file holding a pipeline, a mapping, or a ``Pipeline``. ``unique``:
        metadata keys whose values no two episodes may share (see ``create``).
        Stores do not nest: ``StoreExistsError`` if ``root`` is inside a store,
        or holds one below it (see ``config.NEST_SCAN_DIRS`` for how far down is looked).
        ``ledger`` (the default): a store at the ledger's format (every event hash-chained and
        carrying its patch; see the README). ``ledger=False`` makes a store at the format before
        it, for a store that statekit releases without the ledger must still write;
        ``statekit migrate --ledger`` moves such a store (or any older one) to the ledger.
        ``index_url``: keep the index on a PostgreSQL server
        (``postgresql+psycopg://user@host/db``; ``${VAR}`` is expanded from the
        environment when the store opens, so a password need not be written).
        """
        graph = pipeline_from(pipeline)
        if index_url is not None and not isinstance(index_url, str):
            raise ValidationError(f"index_url must be text, got {type(index_url).__name__}")
        try:
            config = StoreConfig(format=format, lock_timeout=lock_timeout, backups=backups,
                                 schema_version=LEDGER_SCHEMA if ledger else PRE_LEDGER_SCHEMA,
                                 unique=unique,  # type: ignore[arg-type]  # pydantic refuses a str, never splits it
                                 index=IndexConfig(url=index_url) if index_url is not None else None,
                                 pipeline=graph)
        except PydanticValidationError as exc:
            raise invalid(exc, None, None, "store") from None
        find_index_url(config)  # refused now (a bad url, an unset ${VAR}), before anything is made
        top = os.path.abspath(os.fspath(root))
        if os.path.lexists(os.path.join(top, CONFIG_FILE)):
            raise StoreExistsError(f"a statekit store already exists at {top}")
        refuse_nesting(top)
        try:
            os.makedirs(top, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, top, "create directory") from exc
        top = os.path.realpath(top)
        store = cls(top, config, disk=disk, clock=clock)
        write_new_store(store.writer.folders, config, graph)
        store.writer.index  # noqa: B018  # opened (and built) now, as open() does
        return store

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, lock_timeout: float | None = None, disk: Disk = DISK,
             clock: Callable[[], datetime] | None = None, read_only: bool = False) -> Store:
        """Open an existing store; ``StoreNotFoundError`` if ``root`` holds none.
        ``read_only``: every write is refused (``ReadOnlyStoreError``) and the index
        is opened read-only, never upgraded or rebuilt (``IndexUnavailableError`` if
        it is not up to date); nothing under ``root`` is changed."""
        top = os.path.realpath(os.path.abspath(os.fspath(root)))
        config = read_config(top)
        if lock_timeout is not None:
            config = config.model_copy(update={"lock_timeout": lock_timeout})
        store = cls(top, config, disk=disk, clock=clock, read_only=read_only)
        store.writer.index  # noqa: B018  # an index that needs an upgrade or a rebuild gets it now
        return store

    @property
    def index(self) -> Index:
        """The SQL index (``.statekit/index.db``): a cache of the files."""
        return self.writer.index

    @property
    def cache(self) -> ResultCache:
        """The store's cache of expensive results (TTS audio, downloaded
        media): ``statekit.cache.Cache``, opened on first use."""
        with self._cache_lock:
            if self._result_cache is None:
                from .cache import Cache

                self._result_cache = Cache.for_store(self)
            return self._result_cache

    def close(self) -> None:
        """Release the index's and the cache's database connections (the store stays usable)."""
        if self._signals is not None:
            self._signals.close()
        self.writer.close_index()
        if self._result_cache is not None:
            self._result_cache.close()
            self._result_cache = None

    # --- one episode ---------------------------------------------------------------

    def episode_path(self, show: str, ep: str) -> str:
        """The path of the episode's file (``ROOT/shows/<show>/episodes/<ep>/episode.yaml``,
        or ``.json``), for a person or a tool to open; reads no file, takes no
        lock. ``EpisodeNotFoundError`` if the episode has none
        (``ShowNotFoundError`` if the show does not exist either)."""
        return self.episodes.episode_path(show, ep)

    def get(self, show: str, ep: str) -> Episode:
        """The episode's committed version (reads the file, and the end of its log; no lock).
        While a person's edit of the file is pending (not adopted by ``sync`` or a write
        yet), this is the version the log rebuilds and ``Episode.pending`` names the file
        and the fields the edit changes."""
        return self.writer.get(show, ep)

    def events(self, show: str, ep: str) -> list[Event]:
        """The episode's committed events, oldest first."""
        return self.episodes.events(show, ep)

    def history(self, show: str, ep: str) -> list[Episode]:
        """Every committed version of the episode, oldest first, rebuilt from its log
        (from the log's first full copy: a log sealed by ``migrate`` starts at the seal)."""
        return self.versions.history(show, ep)

    def version(self, show: str, ep: str, version: int) -> Episode:
        """Committed ``version`` of the episode, rebuilt from its log."""
        return self.versions.at(show, ep, version)

    def diff(self, show: str, ep: str, first: int | None = None, second: int | None = None) -> list[Change]:
        """What changed, field by field: between two committed versions; with none given,
        between the committed version and a pending hand edit of the file (or, with no
        pending edit, the version before and the committed one)."""
        return self.versions.diff(show, ep, first, second)

    def revert(self, show: str, ep: str) -> Episode:
        """Throw a pending hand edit away: the committed version, rebuilt from the log,
        goes back as a new version (one ``revert`` event); the edited file goes to
        ``.statekit/trash``. ``ValidationError`` when there is no pending edit."""
        return revert_episode(self.writer, show, ep)

    def create(self, show: str, ep: str, *, title: str = "", metadata: Mapping[str, Any] | None = None,
               files: Mapping[str, str] | None = None) -> Episode:
        """A new episode at the pipeline's initial stage (version 1, one
        ``create`` event); its show is created on first use.

        ``DuplicateError`` if ``metadata`` holds a value of one of the store's
        unique keys (``unique:`` in statekit.yaml) that another episode has;
        ``update``, ``advance``, ``import_legacy`` and ``sync`` check the same
        (see ``statekit.unique`` for how values compare, ``Writer.unique_claims``
        for the locks and what a stale index can miss)."""
        return self.episodes.create(show, ep, title=title, metadata=metadata, files=files)

    def delete(self, show: str, ep: str) -> str:
        """Remove an episode from its show. Its directory is moved (durably)
        into ``.statekit/trash/`` rather than erased; returns where it went."""
        return self.episodes.delete(show, ep)

    def advance(self, show: str, ep: str, stage: str, *, message: str | None = None, cost: float | None = None,
                expected_version: int | None = None, metadata: Mapping[str, Any] | None = None,
                files: Mapping[str, str] | None = None) -> Episode:
        """Move the episode to ``stage`` (durable; one ``advance`` event).

        Checks ``expected_version`` first, then the move against the pipeline;
        a refused move raises and changes nothing, and so does a move of an
        episode a live stage run holds (``NotReadyError``). ``cost`` is added to the
        stage being left (the work that was just done); entering ``stage``
        counts one attempt for it.

        ``metadata`` and ``files``, if given, replace those fields whole in the
        same write, checked as ``update`` checks them (and the store's unique
        keys, as ``create`` says): still one event, version + 1 once, and the
        event's ``fields`` names those that changed.
        """
        return self.episodes.advance(show, ep, stage, message=message, cost=cost,
                                     expected_version=expected_version, metadata=metadata, files=files)

    def update(self, show: str, ep: str, *, title: str = UNSET, metadata: Mapping[str, Any] = UNSET,
               files: Mapping[str, str] = UNSET, message: str | None = UNSET,
               expected_version: int | None = None) -> Episode:
        """Replace non-stage fields (each given field is replaced whole).

        Nothing is written when nothing changes; otherwise one ``update``
        event naming the changed fields. A value of a unique key that another
        episode has is refused (``DuplicateError``, as ``create`` says).
        """
        given = {k: v for k, v in (("title", title), ("metadata", metadata), ("files", files),
                                   ("message", message)) if v is not UNSET}
        return self.episodes.update(show, ep, given, expected_version)

    def approve(self, show: str, ep: str, stage: str, *, by: str, note: str | None = None,
                expected_version: int | None = None) -> Episode:
        """Record a person's approval to enter the gated ``stage`` (one
        ``approve`` event). It holds until the episode goes back to a stage
        listed before the gate."""
        return self.episodes.approve(show, ep, stage, by=by, note=note, expected_version=expected_version)

    # --- shows ------------------------------------------------------------------------

    def create_show(self, show: str, *, title: str | None = None, metadata: Mapping[str, Any] | None = None) -> Show:
        """Create a show with a title and metadata (creating an episode also creates its show)."""
        return self.show_files.create(show, title=title, metadata=metadata)

    def get_show(self, show: str) -> Show:
        """The show, its episode list reconciled with the episodes on disk."""
        return self.show_files.get(show)

    def shows(self) -> list[str]:
        """Ids of the shows in the store, sorted."""
        return self.show_files.ids()

    # --- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self, show: str, ep: str, stage: str, data: Mapping[str, Any]) -> Episode:
        """Write ``checkpoints/<stage>.json`` durably, then record its hash in
        the episode (version + 1, one ``checkpoint`` event).

        The file carries its own sha256, so damage is caught on load.
        """
        return self.checkpoints.save(show, ep, stage, data)

    def load_checkpoint(self, show: str, ep: str, stage: str) -> dict[str, Any] | None:
        """The data saved for ``stage``, or None if none was saved.

        ``CorruptFileError`` (naming the file) if it is damaged.
        """
        return self.checkpoints.load(show, ep, stage)

    def resume_stage(self, show: str, ep: str) -> str | None:
        """The latest stage (in pipeline order) whose checkpoint is intact:
        where a restarted worker picks up. None if there is none."""
        return self.checkpoints.resume_stage(show, ep)

    # --- assets ---------------------------------------------------------------------------

    def add_asset(self, show: str, ep: str, source: bytes | str | os.PathLike[str], kind: str = "audio",
                  name: str | None = None, *, media_type: str | None = None, label: str | None = None) -> Episode:
        """Store ``source`` (a path, read in chunks, or bytes) once, by its
        sha256, and record it in the episode as ``assets[name]`` (version + 1,
        one ``asset`` event). The same content added anywhere else is the
        same object. ``name`` defaults to the source's file name (or
        ``kind``); an existing name is replaced and its upload record, which
        described the old content, dropped. ``label``: what to record as the
        source (defaults to the path given). The object is durable before
        the episode names it; a hard link to it appears as
        ``episodes/<ep>/assets/<name>`` for people to open."""
        return self.assets.add(show, ep, source, kind, name, media_type=media_type, label=label)

    def asset_path(self, show: str, ep: str, name: str) -> str:
        """Where asset ``name``'s content is (read it, never write it)."""
        return self.assets.path(show, ep, name)

    def verify_asset(self, show: str, ep: str, name: str) -> str:
        """Hash asset ``name`` and return its path; ``CorruptFileError`` with
        the path if it is missing or its content changed."""
        return self.assets.verify(show, ep, name)

    def remove_asset(self, show: str, ep: str, name: str) -> Episode:
        """Forget asset ``name`` (one ``asset_removed`` event); ``gc`` removes
        its content once nothing refers to it."""
        return self.assets.remove(show, ep, name)

    def record_uploads(self, show: str, ep: str, uploads: Mapping[str, UploadRecord | Mapping[str, Any]]) -> Episode:
        """Record where assets were uploaded (one write, one ``upload``
        event). Each key names an asset of the episode, and each record's
        ``sha256`` must be that asset's content: an upload of older content
        is refused."""
        return self.assets.record_uploads(show, ep, uploads)

    def gc_objects(self, *, dry_run: bool = False, ignoring: set[str] | frozenset[str] = frozenset()
                   ) -> ObjectsReport:
        """Remove stored objects no file refers to (episode files, their
        backups, the trash), their sidecars, and temp files interrupted
        writes left in the object folder. Holds the object lock
        exclusively, so no ``add_asset`` is half way meanwhile.
        ``ignoring``: files to count as gone (a dry run of a backup gc)."""
        return self.assets.gc_objects(dry_run=dry_run, ignoring=ignoring)

    def gc_run_temp(self, *, dry_run: bool = False) -> list[Removed]:
        """Remove the temp folders (``run.temp_path()``) of runs that are no
        longer live: a worker killed before its ``finally`` could run."""
        return self.assets.gc_run_temp(self.queries.live_runs(), dry_run=dry_run)

    # --- backups, restore, repair ------------------------------------------------------

    def backups(self, show: str, ep: str) -> list[Backup]:
        """The episode's backups, newest first (``number`` 1 is the newest),
        each checked: ``problem`` says why one cannot be restored."""
        return self.repairs.backups(show, ep)

    def restore(self, show: str, ep: str, backup: int = 1) -> Episode:
        """Put backup number ``backup`` (1 = the newest; see ``backups``) back
        as the episode file, through the normal write path: version + 1 over
        the event log, one ``restore`` event. The file it replaces is kept
        too (a backup if it was valid, in ``.statekit/trash`` if it was not)."""
        return self.repairs.restore(show, ep, backup)

    def gc(self, *, backups_older_than: timedelta, dry_run: bool = False) -> list[str]:
        """Remove backups saved more than ``backups_older_than`` ago (by
        their file time); the newest backup of an episode whose file cannot
        be read is always kept. Returns what was (or would be) removed."""
        return [r.path for r in self.gc_backups(backups_older_than=backups_older_than, dry_run=dry_run)]

    def gc_backups(self, *, backups_older_than: timedelta, dry_run: bool = False) -> list[Removed]:
        """``gc``, saying how big each removed backup was."""
        return self.repairs.gc_backups(backups_older_than=backups_older_than, dry_run=dry_run)

    def compact(self, *, older_than: timedelta | None = None, dry_run: bool = False,
                progress: Progress | None = None) -> CompactReport:
        """Compress the event logs and checkpoints of episodes in a terminal stage untouched
        for ``older_than`` (default: ``retention: {older_than}``, else 30 days) into ``.gz``
        files every read takes as they were (``retention``); says what was saved."""
        return self.retention.compact(older_than if older_than is not None else older_than_of(self.writer),
                                      dry_run=dry_run, progress=progress)

    def repair(self, *, dry_run: bool = False, progress: Progress | None = None) -> RepairReport:
        """Fix what can be fixed without a person, and say what was done:
        a damaged or invalid episode file gets its newest valid backup back;
        an uncommitted event tail (a torn line, or the event of a write that
        stopped before its file was replaced) is dropped; temp files of
        interrupted writes are removed; damaged checkpoints go to the trash
        (``resume`` then starts the stage afresh); finally the index is
        synced with the files (rebuilt if it cannot be read). Valid files
        are not touched. ``dry_run`` lists the actions without doing them."""
        return self.repairs.repair(dry_run=dry_run, progress=progress)

    # --- leased stage runs and recovery ---------------------------------------------------

    def run(self, show: str, ep: str, stage: str, *, owner: str | None = None,
            lease_seconds: float | None = None, reraise: bool = True,
            verify_assets: tuple[str, ...] | list[str] = (), renew: bool = True) -> Run:
        """A leased run of ``stage``, as a context manager::

            with store.run("oliver", "ep001", "downloading") as run:
                data = run.resume or {}          # what an earlier attempt saved
                ...
                run.checkpoint({"part": 3}, cost=0.02)

        Entering moves the episode into ``stage`` (a legal move, counting an
        attempt; or starts it where it is, if it waits there) under a lease
        of ``lease_seconds`` (by default the pipeline's ``retry.lease_seconds``,
        at most ``runs.CLAIM_LEASE_S``, 20 s) that is renewed in the background
        while the run is open. Leaving moves it to the
        stage's success target (``pipeline.runs``), or marks the stage done
        when there is none or the target's gate is not approved yet. An
        exception is classified and recorded, and the episode goes to the
        failure stage: due again after a backoff, held for a person, or
        skipped (see ``failures.plan_failure``). The exception is raised again unless
        ``reraise=False``.

        ``verify_assets``: names of assets hashed when the run starts (before
        the work) and again before it counts as done; a missing or changed
        one fails the run with ``CorruptFileError`` (raised on entry even
        with ``reraise=False``: the body cannot run). ``run.temp_path()``
        gives paths for intermediate files, all removed when the run ends.

        ``NotReadyError`` (its ``reason``) when the episode is not waiting
        for this run now: a live worker holds it (``leased``), its retry is not
        due (``due``), it is held for a person (``hold``), the stage is done
        (``done``), or it is at a stage listed after ``stage`` in the pipeline
        (``moved_on``: another worker ran the stage, or it was moved on). A
        worker whose ``next()`` answer went stale gets only these. A request
        that was never right, for a stage the episode has not reached (an
        episode at ``discovered`` asked to run ``converting``), raises
        ``InvalidTransitionError`` (or ``ApprovalRequiredError`` at an
        unapproved gate). A run whose lease expired cannot write:
        ``LeaseExpiredError``.

        ``renew``: renew the lease in the background (in the index, every
        third of its length, judged by the database's clock; no file write),
        as a claimed run does (see ``claim``): a worker busy or stuck in the
        stage keeps its lease, a killed one loses it within ``lease_seconds``.
        ``renew=False``: only the run's own writes renew it, and the lease is
        the pipeline's unless given.
        """
        return self.runs.run(show, ep, stage, owner=owner, lease_seconds=lease_seconds, reraise=reraise,
                             verify_assets=verify_assets, renew=renew)

    def claim(self, stage: str, *, owner: str | None = None, lease_seconds: float | None = None,
              show: str | None = None, reraise: bool = True) -> Run | None:
        """Pick the episode ready for ``stage`` with the highest ``priority``,
        then the longest-waiting, and lease it in
        one step, then write the run's start to it (one ``start`` event); the
        ``Run`` (use it as ``with run: ...``, as ``store.run`` returns it),
        or None when nothing is ready.

        Two live claimers, in any processes on any machines sharing the
        index, never get the same episode, and none is lost to a race:
        ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one write transaction on
        SQLite. The lease lives in the index and is renewed in the
        background (no file write per renewal), judged by the database's
        clock; ``lease_seconds`` defaults to the pipeline's, at most
        ``runs.CLAIM_LEASE_S`` (20 s), so a killed worker's episode is
        claimable again within that. ``show``: claim only in this show.
        None also when the stage is paused or at a limit (``try_claim`` says which)."""
        return self.runs.claim(stage, owner=owner, lease_seconds=lease_seconds, show=show, reraise=reraise)

    def try_claim(self, stage: str, *, owner: str | None = None, lease_seconds: float | None = None,
                  show: str | None = None, reraise: bool = True) -> Run | ClaimRefused | None:
        """``claim``, saying why it handed nothing out when episodes may be
        ready: a ``ClaimRefused`` (``reason``: ``paused``, ``concurrency`` or
        ``rate``; ``retry_after`` seconds, when known). Claims take the
        highest ``priority`` first, then the longest-waiting; a stage's
        ``limits:`` (``statekit.yaml``) are counted and the lease taken in one
        transaction, so no number of workers on any number of machines exceeds them."""
        return self.runs.try_claim(stage, owner=owner, lease_seconds=lease_seconds, show=show, reraise=reraise)

    # --- operator controls -------------------------------------------------------------

    def pause(self, stage: str, *, show: str | None = None, by: str | None = None,
              note: str | None = None) -> Paused:
        """Pause ``stage`` (in ``show``, or every show): ``claim``, ``next`` and
        ``statekit worker`` hand none of it out; runs already leased finish.
        Durable in ``.statekit/paused.json``; one line in ``.statekit/store-events.jsonl``.
        ``Paused``: the pause, whether it is new (nothing is written for a
        stage paused already), and how many runs of it are still live."""
        return self.controls.pause(stage, show, by=by, note=note)

    def resume(self, stage: str, *, show: str | None = None, by: str | None = None,
               note: str | None = None) -> list[Pause]:
        """Lift the pauses of ``stage`` (all of them, or ``show``'s); the pauses lifted."""
        return self.controls.resume(stage, show, by=by, note=note)

    def paused(self) -> list[Pause]:
        """The paused stages (``.statekit/paused.json``)."""
        return self.controls.paused()

    def controls_overview(self) -> dict[str, Any]:
        """Paused stages and each limited stage's limits in use (``statekit status``)."""
        return self.controls.overview()

    def prioritize(self, show: str, ep: str, priority: int, *, note: str | None = None,
                   expected_version: int | None = None) -> Episode:
        """Set the episode's ``priority`` (claims and ``next`` take higher
        first, then the longest-waiting); one ``prioritize`` event."""
        return self.episodes.prioritize(show, ep, priority, note=note, expected_version=expected_version)

    def attach_run(self, show: str, ep: str, stage: str, run_id: str) -> Run:
        """The ``Run`` another process holds on the episode (``statekit
        worker``'s command finds its id in ``STATEKIT_RUN_ID``), to call
        ``checkpoint``, ``cost`` and ``add_asset`` under its lease; do not
        enter it (the worker ends the run)."""
        return self.runs.attach(show, ep, stage, run_id)

    def recover(self, *, sync: bool = True) -> RecoverReport:
        """Bring back episodes whose worker died: each one whose lease has
        expired goes to the failure stage with an ``interrupted`` error and
        one ``recovered`` event, due again at once (or skipped when its
        attempts are used up). Also completes give-ups a stopped process
        left half done. ``sync`` first brings the index up to date with the
        files, so a worker killed between its file write and its index
        update is found too."""
        report = RecoverReport()
        if sync:
            report.synced = self.sync()
        failure_stage = self.pipeline.failure_stage
        return self.recovery.recover(
            report, self.index.expired_leases(self.clock()),
            self.index.episode_data(stage=failure_stage) if failure_stage is not None else [])

    def retry_now(self, show: str, ep: str, *, by: str | None = None, note: str | None = None) -> Episode:
        """Release an episode for its next attempt now: clears a hold (after a
        person fixed the cause) or a retry's remaining backoff (one ``retry``
        event). ``next()`` hands it out again."""
        return self.recovery.retry_now(show, ep, by=by, note=note)

    def error_log(self) -> list[dict[str, Any]]:
        """The lines of ``.statekit/errors.jsonl``, oldest first (damaged lines skipped)."""
        return self.recovery.error_log()

    # --- bulk changes and changes of the graph (``bulk``) ------------------------------

    def retry(self, stage: str, *, kind: str | None = None, show: str | None = None, since: datetime | None = None,
              note: str | None = None, by: str | None = None, dry_run: bool = False,
              progress: Progress | None = None) -> BulkReport:
        """Every failed, held or given-up episode of ``stage`` (optionally of one error
        ``kind``, one ``show``, failed ``since``) released for its next attempt: one
        ``retry`` event each through the write path; ``dry_run`` writes nothing."""
        return self.bulk.retry(stage, kind=kind, show=show, since=since, note=note, by=by, dry_run=dry_run,
                               progress=progress)

    def requeue(self, where: str, *, to: str | None = None, note: str | None = None, by: str | None = None,
                dry_run: bool = False, progress: Progress | None = None) -> BulkReport:
        """The episodes a SQL WHERE clause on table ``episodes`` selects (read-only) moved
        to stage ``to``, or released where they are: one ``requeue`` event each."""
        return self.bulk.requeue(where, to=to, note=note, by=by, dry_run=dry_run, progress=progress)

    def pipeline_check(self, proposed: Pipeline | Mapping[str, Any] | str | os.PathLike[str] | None = None,
                       show: str | None = None) -> list[dict[str, Any]]:
        """Episodes stranded by a graph: a ``proposed`` one (a statekit.yaml or pipeline
        file, not saved yet) against the one in force, or the one in force against
        the graph each episode last moved under."""
        return self.bulk.stranded(pipeline_from(proposed) if proposed is not None else None, show)

    def stranded_counts(self) -> list[dict[str, Any]]:
        """How many episodes sit in a stage the graph in force lacks, or wait to retry one,
        per show and stage (``show_id``, ``stage``, ``n``); from indexed columns only."""
        return self.bulk.stranded(counts=True)

    def pipeline_migrate(self, mapping: Mapping[str, str], *, note: str | None = None, by: str | None = None,
                         dry_run: bool = False, progress: Progress | None = None) -> BulkReport:
        """Move stranded episodes by ``mapping`` (old stage -> new stage): one
        ``pipeline_migrate`` event each."""
        return self.bulk.migrate(mapping, note=note, by=by, dry_run=dry_run, progress=progress)

    def pipeline_history(self) -> list[dict[str, Any]]:
        """The graphs the store ran under (``.statekit/pipelines``), oldest first."""
        return self.writer.graphs.listing()

    # --- questions about many episodes (answered by the index) ----------------------

    def counts(self, show: str | None = None) -> dict[str, int]:
        """Number of episodes per stage, every pipeline stage listed (from the index)."""
        return self.queries.counts(show)

    def next(self, stage: str, limit: int = 10) -> list[Episode]:
        """Episodes ready for ``stage``, longest-waiting first: what a worker
        for that stage asks for, then runs with ``run``. A retry from
        ``failed`` waits for the stage that failed and for its backoff; an
        episode a live worker holds (its lease not yet expired) is never
        handed out; a gated stage waits for its approval; a held episode
        waits for a person."""
        return self.queries.next(stage, limit)

    def costs(self, by: str = "stage", show: str | None = None) -> dict[str, float]:
        """Money spent so far per stage (``by="stage"``) or per show (``by="show"``)."""
        return self.queries.costs(by, show)

    def with_errors(self, show: str | None = None) -> list[Episode]:
        """Episodes that have recorded errors, most recently updated first."""
        return self.queries.with_errors(show)

    def stuck(self, older_than: timedelta, show: str | None = None) -> list[Episode]:
        """Episodes in a non-terminal stage for longer than ``older_than``, oldest first."""
        return self.queries.stuck(older_than, show)

    def status(self) -> list[dict[str, Any]]:
        """Per show: episodes per stage, how many are done (terminal), completion %, cost."""
        return self.index.status()

    def sql(self, query: str, timeout: float = 30.0) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only SQL statement on the index: (column names, rows).
        Writes are refused by the database itself; a statement still running
        after ``timeout`` seconds is stopped (``QueryTimeoutError``). A refused
        query raises ``QueryError``, whose hint fits the cause. (The default
        is ``index.SQL_TIMEOUT_S``, not imported here: SQLAlchemy loads with the index.)"""
        return self.index.sql(query, timeout)

    # --- keeping the index true ------------------------------------------------------

    def rebuild_index(self, progress: Progress | None = None) -> RebuildReport:
        """Build a fresh index from the files alone and swap it in at once."""
        return _rebuild(self.writer, progress)

    def sync(self, progress: Progress | None = None) -> SyncReport:
        """Pick up changes made outside statekit (new, edited, deleted files)."""
        return _sync(self.writer, self.show_files, progress)

    def verify(self, progress: Progress | None = None, *, full: bool = False) -> VerifyReport:
        """Compare the index with the files, the files with their event logs,
        and every asset with its hash; report every value of a unique key
        that more than one episode file holds (``kind="duplicate"``). An episode
        whose files, log and index rows are byte for byte those of its last clean
        check is not checked again (``report.unchanged``; ``.statekit/verified.db``)
        unless ``full``, which checks everything and refreshes what is remembered."""
        return _verify(self.writer, progress, full=full)

    def upgrade_index(self) -> str:
        """Bring the index to the current schema revision (Alembic); returns it."""
        from .index.connect import upgrade

        return upgrade(self.writer)

    # --- schema migration and import --------------------------------------------------------

    def migrate(self, *, dry_run: bool = False, progress: Progress | None = None, ledger: bool = False
                ) -> MigrationReport:
        """Rewrite episode files (and show.yaml files) of an older schema at the current one.

        A dry run only lists them. Otherwise each file is first copied to
        ``.statekit/backups/migrate-<time>/`` and then rewritten through the
        normal write path (version + 1, one ``migrate`` event). A schema-1
        show.yaml keeps only the head of its episode list that is not in
        creation order (the show's order does not change).
        ``progress(done, total)``: called as files are read, then as they are rewritten.
        ``ledger``: also move a store made before the ledger to it: every episode's log
        is sealed (one ``seal`` event), then ``statekit.yaml`` moves to format 5.
        """
        return self.migration.migrate(dry_run=dry_run, progress=progress, ledger=ledger)

    def import_legacy(self, legacy_dir: str | os.PathLike[str], show: str,
                      progress: Progress | None = None) -> ImportReport:
        """Bring schema-0 episode YAML files (``*.yaml`` and ``*.yml`` anywhere
        under ``legacy_dir``, e.g. ``processed/2004/*.yaml``) into ``show``,
        migrated; unknown keys are kept under ``metadata``.

        A bad entry does not stop the import: each is listed in ``rejected``
        with its reason (a symlink, which is never followed; a directory or
        other non-file named like YAML; a file or folder that cannot be read;
        invalid YAML or an invalid episode; an id another file already
        took). Episodes already in the store are skipped, so an import can be
        re-run. ``progress(done, total)`` is called as files are read.
        """
        return self.migration.import_legacy(legacy_dir, show, progress)

    # Last in the class: a method named ``list`` hides the builtin for the
    # annotations of every method written after it.
    def list(self, show: str | None = None, stage: str | None = None, *, limit: int | None = None,
             after: str | None = None) -> list[Episode]:
        """Episodes in show order, optionally of one show and/or one stage (from the index); a page:
        at most ``limit``, after the episode ``after`` ("SHOW/EP": the page before's ``[-1].key``)."""
        return self.queries.episodes(show, stage, limit=limit, after=after)


def _rebuild(writer: Writer, progress: Progress | None = None) -> RebuildReport:
    from .index.rebuild import rebuild

    return rebuild(writer, progress)


def _sync(writer: Writer, shows: Shows, progress: Progress | None = None) -> SyncReport:
    from .index.sync import sync

    return sync(writer, shows, progress)


def _verify(writer: Writer, progress: Progress | None = None, *, full: bool = False) -> VerifyReport:
    from .index.verify import verify
    from .signals.metrics import record_verify

    report = verify(writer, progress, full=full)
    record_verify(writer, len(report.problems), writer.clock())  # statekit_index_drift
    return report
