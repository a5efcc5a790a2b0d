"""The Store: one object that composes files, codecs and the pipeline.

Every write takes one path (``_write``): lock the episode -> read its file ->
pure checks (version, then stage move) -> append the event (fsynced) ->
replace the file atomically and durably. The event goes first, so a crash
leaves at most an event newer than the file (an uncommitted tail, dropped by
the next write) and never a file change without its event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError as PydanticValidationError

from . import assets, eventlog, folders, locks
from . import files as diskio
from . import unique as uniq
from .codecs import CODECS, JSON_CODEC, YAML_CODEC, Parsed, compact_json, line_of, same
from .errors import (
    AssetNotFoundError,
    CorruptFileError,
    DuplicateError,
    EpisodeExistsError,
    EpisodeNotFoundError,
    IndexUnavailableError,
    InvalidIdError,
    NotReadyError,
    PipelineError,
    SchemaVersionError,
    ShowNotFoundError,
    StatekitError,
    StorageError,
    StoreExistsError,
    StoreNotFoundError,
    UnknownStageError,
    UnsafePathError,
    ValidationError,
    VersionConflictError,
)
from .files import DISK, Disk
from .ids import check_id
from .models import (
    CHECKPOINT_SCHEMA,
    COST_HINT,
    EPISODE_SCHEMA,
    EVENT_SCHEMA,
    NOT_UTF8_HINT,
    SHOW_SCHEMA,
    STORE_SCHEMA,
    Approval,
    AssetRecord,
    CheckpointRecord,
    Episode,
    Event,
    Lease,
    Show,
    StoreConfig,
    UploadRecord,
    add_cost,
    check_text,
    cost_sum,
    find_bad_text,
    utcnow,
)
from .pipeline import (
    PRESETS,
    Pipeline,
    approvals_after_move,
    load_pipeline,
    refuse_move,
)
from .runs import (
    Run,
    default_owner,
    giving_up,
    interrupted,
    log_failure,
    plan_failure,
    plan_give_up,
)
from .schema import legacy_id, schema_of, upgrade_episode
from .taxonomy import ErrorKind

if TYPE_CHECKING:
    from .cache import Cache as ResultCache
    from .index import Index
    from .index.sync import Progress, RebuildReport, SyncReport, VerifyReport

log = logging.getLogger("statekit")

CONFIG_FILE = "statekit.yaml"
_UNSET: Any = object()
_CACHE_SIZE = 4096

_CONFIG_HEADER = b"""\
# statekit store configuration.
# pipeline: the stage graph every move is checked against (edit with care:
# statekit checks the graph when it opens the store).
# unique: metadata keys whose values no two episodes may share, e.g.
# [archive_identifier] (restart running workers after changing it).
"""


@dataclass
class MigrationReport:
    """What ``migrate`` found (dry run) or rewrote: one entry per file."""

    dry_run: bool
    files: list[dict[str, Any]] = field(default_factory=list)
    backup_dir: str | None = None


@dataclass
class Backup:
    """One kept version of an episode file."""

    number: int
    """1 for the newest (what ``restore --backup N`` takes)."""
    version: int
    path: str
    size: int
    saved_at: datetime
    problem: str | None = None
    """Why it cannot be restored (damaged, invalid), or None."""


@dataclass
class RepairReport:
    """What ``repair`` did (or, in a dry run, would do), and what it could not fix."""

    dry_run: bool = False
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    synced: SyncReport | None = None


@dataclass
class RecoverReport:
    """What ``recover`` did: runs found interrupted, give-ups completed."""

    recovered: list[dict[str, Any]] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    synced: SyncReport | None = None


class _LeaseRanOut(Exception):
    """Internal: the episode's lease has expired and must be recovered first."""


@dataclass
class ImportReport:
    """What ``import_legacy`` did, file by file (``file`` is relative to the
    folder imported from): ``imported`` and ``skipped`` name the episode,
    ``skipped`` and ``rejected`` say why."""

    imported: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {"imported": len(self.imported), "skipped": len(self.skipped), "rejected": len(self.rejected)}


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(data: Any) -> bytes:
    """The bytes a checkpoint's sha256 is taken over (key order does not matter)."""
    json.dumps(data, allow_nan=False)  # refuses NaN/Infinity, which orjson would write as null
    return compact_json(data, sort_keys=True)


def _invalid(exc: PydanticValidationError, raw: bytes | None, path: str | None, what: str) -> ValidationError:
    """One clear error (file, line, field) from pydantic's list of errors."""
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    field_name = ".".join(str(p) for p in loc) or what
    line = line_of(raw, loc) if raw is not None and loc else None
    where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    return ValidationError(f"{where}{field_name}: {msg}{more}", path=path, line=line, field=field_name)


def _read_config(root: str) -> StoreConfig:
    path = os.path.join(root, CONFIG_FILE)
    raw = diskio.read_file(path)
    if raw is None:
        raise StoreNotFoundError(f"no statekit store at {root} ({CONFIG_FILE} not found)")
    data = YAML_CODEC.load(raw, path)
    schema_of(data, path, current=STORE_SCHEMA, legacy_ok=False)
    pipeline = data.get("pipeline")
    try:
        load_pipeline(pipeline if isinstance(pipeline, Mapping) else {})
    except PipelineError as exc:
        raise PipelineError(f"{path}: {exc.message}", problems=exc.problems) from None
    try:
        return StoreConfig.model_validate(data)
    except PydanticValidationError as exc:
        raise _invalid(exc, raw, path, "statekit.yaml") from None


NEST_SCAN_DIRS = 2000
NEST_SCAN_ENTRIES = 50_000
"""How far ``Store.init`` looks for a store below its folder: breadth first
(the nearest levels first), not into ``.git``, ``.statekit`` or through
symlinks, and at most this many folders and directory entries, so init in
a huge folder stays fast; a store deeper in a bigger tree is not found."""


def _refuse_nesting(top: str) -> None:
    """``StoreExistsError`` if ``top`` is inside a store or holds one below it
    (a command run inside would find the wrong one, and a rebuild of the
    outer store would index the inner one's files)."""
    real = os.path.realpath(top)
    for folder in Path(real).parents:
        if os.path.lexists(os.path.join(folder, CONFIG_FILE)):
            raise StoreExistsError(
                f"{top} is inside the statekit store at {folder}; stores cannot be nested",
                hint=f"use that store (statekit --root {folder} ...), or choose a directory outside it")
    inner = _store_below(real)
    if inner is not None:
        raise StoreExistsError(
            f"{top} holds a statekit store below it, at {inner}; stores cannot be nested",
            hint=f"use that store (statekit --root {inner} ...), or choose a directory that does not hold one")


def _store_below(top: str) -> str | None:
    """The first folder below ``top`` holding ``statekit.yaml``, within the
    bounds of ``NEST_SCAN_DIRS`` and ``NEST_SCAN_ENTRIES``; None if none."""
    queue = deque([top])
    folders = entries = 0
    while queue and folders < NEST_SCAN_DIRS and entries < NEST_SCAN_ENTRIES:
        folder = queue.popleft()
        folders += 1
        try:
            listing = os.scandir(folder)
        except OSError:  # missing (init makes it) or unreadable: nothing to find there
            continue
        with listing:
            for entry in listing:
                entries += 1
                if entry.name == CONFIG_FILE and folder != top:
                    return entry.path[: -len(CONFIG_FILE) - 1]
                if entry.name not in (".git", ".statekit") and entry.is_dir(follow_symlinks=False):
                    queue.append(entry.path)
                if entries >= NEST_SCAN_ENTRIES:
                    break
    return None


def _pipeline_from(spec: Pipeline | Mapping[str, Any] | str | os.PathLike[str]) -> Pipeline:
    if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and spec in PRESETS):
        path = os.fspath(spec)
        raw = diskio.read_file(path)
        if raw is None:
            if isinstance(spec, str) and os.sep not in spec and not spec.endswith((".yaml", ".yml")):
                return load_pipeline(spec)  # an unknown preset name: say so
            raise PipelineError(f"pipeline file {path} not found")
        data = YAML_CODEC.load(raw, path)
        return load_pipeline(data.get("pipeline", data))
    return load_pipeline(spec)


class _EpisodePaths:
    __slots__ = ("chain", "dir", "files", "events")

    def __init__(self, root: str, show: str, ep: str, suffix: str) -> None:
        shows = root + "/shows"
        show_dir = f"{shows}/{show}"
        self.chain = (shows, show_dir, show_dir + "/episodes", f"{show_dir}/episodes/{ep}")
        self.dir = self.chain[-1]
        other = ".json" if suffix == ".yaml" else ".yaml"
        self.files = (f"{self.dir}/episode{suffix}", f"{self.dir}/episode{other}")
        self.events = self.dir + "/events.jsonl"


class Store:
    """A store of episode files under one root. Open with ``Store.init`` or
    ``Store.open``; safe to share between threads and to run in many processes."""

    def __init__(self, root: str, config: StoreConfig, *, disk: Disk = DISK,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.root = root
        self.clock: Callable[[], datetime] = clock or utcnow
        """The time every write stamps (UTC, timezone-aware); tests pass a fake one."""
        self.config = config
        self.pipeline: Pipeline = config.pipeline
        self._disk = disk
        self._codec = CODECS["." + config.format]
        self._cache: OrderedDict[str, Parsed] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._root_fd = folders.open_root(root)  # every folder below is reached from it, never through a symlink
        weakref.finalize(self, os.close, self._root_fd)
        self._path_cache: dict[tuple[str, str], _EpisodePaths] = {}
        self._index: Index | None = None
        self._result_cache: ResultCache | None = None

    def __repr__(self) -> str:
        return f"Store({self.root!r}, pipeline={self.pipeline.name!r}, format={self.config.format!r})"

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
        disk: Disk = DISK,
        clock: Callable[[], datetime] | None = None,
    ) -> Store:
        """Create a new store at ``root`` (created if missing) and open it.

        ``pipeline``: a preset name (``archive``, ``podcast``), a path to a YAML
        file holding a pipeline, a mapping, or a ``Pipeline``. ``unique``:
        metadata keys whose values no two episodes may share (see ``create``).
        Stores do not nest: ``StoreExistsError`` if ``root`` is inside a store,
        or holds one below it (see ``NEST_SCAN_DIRS`` for how far down is looked).
        """
        graph = _pipeline_from(pipeline)
        try:
            config = StoreConfig(format=format, lock_timeout=lock_timeout, backups=backups,
                                 unique=unique,  # type: ignore[arg-type]  # pydantic refuses a str, never splits it
                                 pipeline=graph)
        except PydanticValidationError as exc:
            raise _invalid(exc, None, None, "store") from None
        top = os.path.abspath(os.fspath(root))
        if os.path.lexists(os.path.join(top, CONFIG_FILE)):
            raise StoreExistsError(f"a statekit store already exists at {top}")
        _refuse_nesting(top)
        try:
            os.makedirs(top, exist_ok=True)
        except OSError as exc:
            raise diskio.storage_error(exc, top, "create directory") from exc
        top = os.path.realpath(top)
        store = cls(top, config, disk=disk, clock=clock)
        store._make_dir(("shows",))
        with store._open((".statekit",), create=True) as machine:
            ignore = os.path.join(top, ".statekit", ".gitignore")
            if not diskio.lexists(ignore, dir_fd=machine):
                diskio.atomic_write(disk, ignore, b"# machine-owned: index, locks, backups, trash\n*\n", dir_fd=machine)
        body = config.model_dump(mode="json")
        body["pipeline"] = graph.to_config()
        diskio.atomic_write(disk, os.path.join(top, CONFIG_FILE), _CONFIG_HEADER + YAML_CODEC.dump_plain(body, flow_leaves=True),
                            dir_fd=store._root_fd)
        return store._with_index()

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, lock_timeout: float | None = None, disk: Disk = DISK,
             clock: Callable[[], datetime] | None = None) -> Store:
        """Open an existing store; ``StoreNotFoundError`` if ``root`` holds none."""
        top = os.path.realpath(os.path.abspath(os.fspath(root)))
        config = _read_config(top)
        if lock_timeout is not None:
            config = config.model_copy(update={"lock_timeout": lock_timeout})
        return cls(top, config, disk=disk, clock=clock)._with_index()

    def _with_index(self) -> Store:
        from .index.sync import open_index

        self._index = open_index(self)
        return self

    @property
    def index(self) -> Index:
        """The SQL index (``.statekit/index.db``): a cache of the files."""
        if self._index is None:
            self._with_index()
        assert self._index is not None
        return self._index

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
        if self._index is not None:
            self._index.close()
        if self._result_cache is not None:
            self._result_cache.close()
            self._result_cache = None

    def _index_quietly(self, what: str, **changes: Any) -> None:
        """Update the index after the files are durable. A failure here never
        touches the files and is not the caller's failure: it is logged, and
        the next ``sync`` repairs the index."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self.index.write(**changes)
        except (IndexUnavailableError, SQLAlchemyError, OSError, TypeError, ValueError, OverflowError) as exc:
            log.warning("statekit: the index missed %s (%s); run 'statekit sync' to repair it", what, exc)

    # --- paths ----------------------------------------------------------------

    def _paths(self, show: str, ep: str) -> _EpisodePaths:
        """Every path of one episode, computed once (ids are already checked)."""
        key = (show, ep)
        paths = self._path_cache.get(key)
        if paths is None:
            if len(self._path_cache) >= _CACHE_SIZE:
                self._path_cache.clear()
            paths = self._path_cache[key] = _EpisodePaths(self.root, show, ep, self._codec.suffix)
        return paths

    def _episode_dir(self, show: str, ep: str) -> str:
        return self._paths(show, ep).dir

    def _show_file(self, show: str) -> str:
        return os.path.join(self.root, "shows", show, "show.yaml")

    def _episode_paths(self, show: str, ep: str) -> tuple[str, str]:
        return self._paths(show, ep).files

    def _check_stage(self, stage: str) -> str:
        check_id(stage, "stage")
        if stage not in self.pipeline.stages:
            raise UnknownStageError(
                f"unknown stage {stage!r} in pipeline {self.pipeline.name!r}", stages=list(self.pipeline.stages),
                stage=stage,
            )
        return stage

    def _open(self, parts: tuple[str, ...], *, create: bool = False,
              durable: bool = True) -> AbstractContextManager[int]:
        """The folder ``<root>/<parts...>``, held open while the block runs:
        walked from the root's descriptor on every call, never through a
        symlink, whenever one was planted (``files.open_dir``). Write in it
        with ``dir_fd=``; ``FileNotFoundError`` if it is missing and not ``create``."""
        return folders.open_dir(self._disk, self._root_fd, self.root, parts, create=create, durable=durable)

    def _make_dir(self, parts: tuple[str, ...]) -> None:
        """Make ``<root>/<parts...>`` (durably) if it is missing, as ``_open`` does."""
        os.close(folders.walk_dir(self._disk, self._root_fd, self.root, parts, create=True))

    def _open_existing(self, parts: tuple[str, ...]) -> AbstractContextManager[int | None]:
        """``_open`` for a folder that may be missing: None while it is."""
        return folders.open_existing_dir(self._root_fd, self.root, parts)

    # --- locks ----------------------------------------------------------------

    @contextmanager
    def _lock(self, parts: tuple[str, ...], name: str, what: str, timeout: float | None = None) -> Iterator[None]:
        """The lock file ``<root>/<parts...>/<name>``, its folder made if missing
        (not fsynced: a lock needs no durable folder entry)."""
        wait = self.config.lock_timeout if timeout is None else timeout
        path = "/".join((self.root, *parts, name))
        with self._open(parts, create=True, durable=False) as folder, \
                locks.hold_lock(self._disk, path, wait, what, dir_fd=folder):
            yield

    def _episode_lock(self, show: str, ep: str) -> Any:
        return self._lock((".statekit", "locks", "episodes", show), ep + ".lock", f"episode {show}/{ep}")

    def _show_lock(self, show: str) -> Any:
        return self._lock((".statekit", "locks", "shows"), show + ".lock", f"show {show}")

    @contextmanager
    def _unique_claims(self, show: str, ep: str, before: Mapping[str, Any] | None, after: Mapping[str, Any],
                       edited: tuple[str, bytes] | None = None) -> Iterator[None]:
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
            yield
            return
        with ExitStack() as held:
            for bucket in sorted({c.bucket for c in wanted}):
                held.enter_context(self._lock((".statekit", "locks", "unique"), bucket + ".lock",
                                              f"the unique values of bucket {bucket}"))
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
                metadata = self._load(other_show, other_ep)[1].model.metadata
            except StatekitError:
                continue  # gone, or unreadable: its file holds no value to refuse for
            if uniq.canonical(metadata.get(claim.key)) == claim.text:
                return f"{other_show}/{other_ep}"
        return None

    # --- reading ----------------------------------------------------------------

    def _cached(self, path: str, raw: bytes) -> Parsed | None:
        with self._cache_lock:
            hit = self._cache.get(path)
            if hit is not None and hit.raw == raw:
                self._cache.move_to_end(path)
                return hit
        return None

    def _remember(self, path: str, parsed: Parsed) -> None:
        with self._cache_lock:
            self._cache[path] = parsed
            self._cache.move_to_end(path)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _forget(self, prefix: str) -> None:
        with self._cache_lock:
            for path in [p for p in self._cache if p.startswith(prefix)]:
                del self._cache[path]

    def _episode_missing(self, show: str, ep: str) -> StatekitError:
        if not folders.check_dirs(self.root, ("shows", show)):
            return ShowNotFoundError(f"show {show!r} not found", show_id=show)
        return EpisodeNotFoundError(f"episode {show}/{ep} not found", show_id=show, episode_id=ep)

    @contextmanager
    def _episode_folder(self, show: str, ep: str) -> Iterator[int]:
        """The episode's folder, held open (``_open``); the episode is missing if it is."""
        try:
            folder = folders.walk_dir(self._disk, self._root_fd, self.root, ("shows", show, "episodes", ep))
        except FileNotFoundError:
            raise self._episode_missing(show, ep) from None
        try:
            yield folder
        finally:
            os.close(folder)

    def _load(self, show: str, ep: str, folder: int | None = None) -> tuple[str, Parsed]:
        """Path and parsed content of an episode file (cached by its bytes),
        read in its ``folder`` (held open by the caller, or opened here)."""
        if folder is None:
            with self._episode_folder(show, ep) as opened:
                return self._load(show, ep, opened)
        paths = self._paths(show, ep)
        for path in paths.files:
            raw = diskio.read_file(path, dir_fd=folder)
            if raw is not None:
                break
        else:
            raise self._episode_missing(show, ep)
        parsed = self._cached(path, raw)
        if parsed is None:
            try:
                parsed = self._parse_episode(path, raw, show, ep)
            except (CorruptFileError, ValidationError) as exc:
                raise self._with_backup_hint(exc, show, ep) from None
            self._remember(path, parsed)
        return path, parsed

    def _with_backup_hint(self, exc: CorruptFileError | ValidationError, show: str, ep: str) -> StatekitError:
        """The read error, naming the newest backup that can be restored."""
        newest = self._newest_valid_backup(show, ep)
        exc.add_context(show_id=show, episode_id=ep)
        if newest is None:
            exc.extras.setdefault("backup", None)
            return exc
        rel = os.path.relpath(newest.path, self.root)
        exc.message += f"; newest valid backup: {rel} (version {newest.version})"
        exc.extras["backup"] = rel
        exc.hint = (f"fix the file by hand, or run 'statekit restore {show}/{ep}' to put that backup back "
                    "('statekit repair' does it for every damaged episode); nothing was changed")
        return exc

    def _parse_episode(self, path: str, raw: bytes, show: str, ep: str) -> Parsed:
        codec = CODECS[os.path.splitext(path)[1]]
        parsed = codec.parse(raw, path)
        upgraded, _ = upgrade_episode(parsed.data, path=path, show_id=show, episode_id=ep, now=self.clock())
        try:
            model = Episode.model_validate(upgraded)
        except PydanticValidationError as exc:
            raise _invalid(exc, raw, path, "episode") from None
        if (model.show_id, model.episode_id) != (show, ep):
            raise ValidationError(
                f"{path}: the file says {model.show_id}/{model.episode_id} but lives in {show}/{ep}",
                path=path, field="episode_id", line=line_of(raw, ("episode_id",)),
                hint="fix show_id/episode_id in the file, or move it to the matching directory",
            )
        if model.stage not in self.pipeline.stages:
            raise ValidationError(
                f"{path}: stage {model.stage!r} is not a stage of pipeline {self.pipeline.name!r}",
                path=path, field="stage", line=line_of(raw, ("stage",)),
                hint="stages: " + ", ".join(self.pipeline.stages),
            )
        parsed.model = model
        return parsed

    def episode_path(self, show: str, ep: str) -> str:
        """The path of the episode's file (``ROOT/shows/<show>/episodes/<ep>/episode.yaml``,
        or ``.json``), for a person or a tool to open; reads no file, takes no
        lock. ``EpisodeNotFoundError`` if the episode has none
        (``ShowNotFoundError`` if the show does not exist either)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        paths = self._paths(show, ep)
        if folders.real_dirs(paths.chain):
            for path in paths.files:
                if os.path.lexists(path):
                    return path
        raise self._episode_missing(show, ep)

    def get(self, show: str, ep: str) -> Episode:
        """The episode as its file holds it now (reads the file; no lock)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        return self._load(show, ep)[1].model  # type: ignore[no-any-return]

    def events(self, show: str, ep: str) -> list[Event]:
        """The episode's committed events, oldest first."""
        episode = self.get(show, ep)
        path = self._paths(show, ep).events
        return validate_events(path, eventlog.read_events(path, episode.version))

    # --- the write path ------------------------------------------------------------

    def _write(
        self,
        show: str,
        ep: str,
        change: Callable[[Episode, datetime], tuple[Episode, dict[str, Any]] | None],
        expected_version: int | None = None,
        before_commit: Callable[[Episode], None] | None = None,
    ) -> Episode:
        """Apply ``change`` under the episode's lock and commit it.

        ``change(current, now)`` returns the new episode and its event fields,
        or None for "nothing to do". Raises before anything is written if the
        version or the move is refused.
        """
        check_id(show, "show id")
        check_id(ep, "episode id")
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            raise ValidationError(f"expected_version must be a non-negative integer, got {expected_version!r}")
        with self._episode_lock(show, ep), self._episode_folder(show, ep) as folder:
            path, current = self._load(show, ep, folder)
            model: Episode = current.model
            if expected_version is not None and model.version != expected_version:
                raise VersionConflictError(
                    f"episode {show}/{ep} is at version {model.version}, not {expected_version}",
                    expected=expected_version, actual=model.version, show_id=show, episode_id=ep,
                )
            outcome = change(model, self.clock())
            if outcome is None:
                return model
            new, event = outcome
            with self._unique_claims(show, ep, model.metadata, new.metadata):
                if before_commit is not None:
                    before_commit(new)
                return self._commit(path, current, new, event, folder=folder)

    def _commit(self, path: str, current: Parsed | None, new: Episode, event: dict[str, Any],
                committed: int | None = None, template: Parsed | None = None,
                replaced: bytes | None = None, *, folder: int) -> Episode:
        """Event (durable) then file (atomic, durable), then the cache and the index.

        ``folder``: the episode's folder, held open (every write acts in it).
        ``committed``: the version the log is at, when it is not the file's
        (adopting a hand edit that changed ``version``). ``template``: the
        text whose comments and layout to keep, if not ``current``'s.
        ``replaced``: the bytes of a file there that could not be read (no
        ``current``): a write that fails puts them back."""
        directory = os.path.dirname(path)
        codec = CODECS[os.path.splitext(path)[1]]
        data = new.model_dump(mode="json")
        if event.get("cost") is not None and not event.get("stage"):
            # money is spent in the stage the episode is in when it is recorded (an advance: the stage it leaves)
            event = {**event, "stage": current.model.stage if current is not None else new.stage}
        try:
            written = codec.dump(data, template or current)
            raw = written.raw
            record = {
                "schema_version": EVENT_SCHEMA,
                "version": new.version,
                "at": data["updated_at"],
                "show_id": new.show_id,
                "episode_id": new.episode_id,
                **{k: v for k, v in event.items() if v is not None},
                "sha256": _sha256(raw),
            }
            line = eventlog.event_line(record)
        except (UnicodeEncodeError, TypeError):  # orjson says TypeError
            # text that bypassed the models' checks: refused here, before anything is written
            where = find_bad_text(data, "episode") or find_bad_text(event, "event")
            if where is None:
                raise
            raise ValidationError(f"{new.key}: {where}", show_id=new.show_id, episode_id=new.episode_id,
                                  hint=NOT_UTF8_HINT) from None
        # an interrupted write's leftovers
        diskio.remove_temp_files(self._disk, directory, nested="checkpoints", dir_fd=folder)
        if committed is None:
            committed = current.model.version if current is not None else 0
        known = current.log_size if current is not None and current.model.version == committed else None
        log = directory + "/events.jsonl"
        sizes: list[int] = []

        def append() -> None:  # runs alongside the file's own fsync; done before the rename
            before, after = eventlog.append_event(self._disk, log, line, committed, known, dir_fd=folder)
            if before == 0:  # a new events.jsonl: its name must be durable before the file's
                try:
                    self._disk.fsync(folder)
                except OSError as exc:
                    raise diskio.storage_error(exc, directory, "sync directory") from exc
            sizes.append(after)

        keep, backups = self._keep_path(path, current)
        previous = current.raw if current is not None else replaced
        try:
            st = diskio.atomic_write(self._disk, path, raw, dir_fd=folder, alongside=append, keep=keep,
                                     keep_dir_fd=backups, previous=previous, created=previous is None)
            if keep is not None and backups is not None:
                self._rotate_backups(keep, current.model.version, backups)  # type: ignore[union-attr]
        finally:
            if backups is not None:
                os.close(backups)
        after = sizes[0]
        written.model = new
        written.log_size = after
        self._remember(path, written)
        from .index import episode_row, event_row, event_rows_of

        written.sha256 = record["sha256"]
        row = episode_row(
            new, data, self.pipeline, path=path[len(self.root) + 1:], size=st.st_size,
            mtime_ns=st.st_mtime_ns, sha256=record["sha256"], checked_at_ns=time.time_ns(),
            position=None,  # type: ignore[arg-type]
        )
        if current is not None:  # what the index row holds if it is up to date
            row["was"] = (current.sha256 or _sha256(current.raw), current.model.stage, current.model.costs)
        event_rows = [event_row(record)]
        if current is None and committed:
            # a restore over a file that could not be read: a rebuild meanwhile dropped the
            # episode, its earlier events too, from the index; they go back with this one
            try:
                event_rows = event_rows_of(eventlog.read_events(log, new.version, strict=False, dir_fd=folder))
            except (StatekitError, ValueError) as exc:
                logging.getLogger("statekit").warning(
                    "statekit: the index keeps only the newest event of %s (%s); run 'statekit sync'", new.key, exc)
        self._index_quietly(f"{new.key} version {new.version}", rows=[row], event_rows=event_rows)
        return new

    # --- backups ----------------------------------------------------------------------

    def _backup_parts(self, show: str, ep: str) -> tuple[str, ...]:
        return (".statekit", "backups", "episodes", show, ep)

    def _keep_path(self, path: str, current: Parsed | None) -> tuple[str, int] | tuple[None, None]:
        """Where the file about to be replaced is kept: its rotating backup
        (``.statekit/backups/episodes/<show>/<ep>/episode.v<version>.<ext>``),
        and that folder, made if missing and held open (the caller closes
        it); None with ``backups: 0``."""
        if current is None or current.model is None or self.config.backups == 0:
            return None, None
        model = current.model
        parts = self._backup_parts(model.show_id, model.episode_id)
        # not fsynced: a backup folder needs no durable entry (the backup is a spare)
        folder = folders.walk_dir(self._disk, self._root_fd, self.root, parts, create=True, durable=False)
        stem, ext = os.path.splitext(os.path.basename(path))
        return "/".join((self.root, *parts, f"{stem}.v{model.version}{ext}")), folder

    def _rotate_backups(self, kept: str, version: int, folder: int) -> None:
        """Keep the newest ``backups`` versions (a failure here only logs: the write is done).

        Versions go up one per write, so the backup that falls out is the one
        ``backups`` versions back, removed by name. Every 16th version the
        folder is listed instead, which also clears what versions that
        jumped (a hand edit of ``version``) left behind."""
        keep_n = self.config.backups
        try:
            if version % 16:
                if version > keep_n:
                    suffix = kept[kept.rindex("."):]
                    try:
                        self._disk.unlink(f"{kept[:kept.rindex('.v')]}.v{version - keep_n}{suffix}", dir_fd=folder)
                    except FileNotFoundError:
                        pass
                return
            directory = os.path.dirname(kept)
            found = sorted(_backup_versions(os.listdir(folder)), reverse=True)
            for _version, name in found[keep_n:]:
                self._disk.unlink(os.path.join(directory, name), dir_fd=folder)
        except OSError as exc:
            log.warning("statekit: could not rotate the backups next to %s (%s)", kept, exc)

    def backups(self, show: str, ep: str) -> list[Backup]:
        """The episode's backups, newest first (``number`` 1 is the newest),
        each checked: ``problem`` says why one cannot be restored."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        with self._open_existing(self._backup_parts(show, ep)) as folder:
            if folder is None:
                if not folders.real_dirs(self._paths(show, ep).chain):
                    raise self._episode_missing(show, ep)
                return []
            return self._list_backups(show, ep, folder)

    def _list_backups(self, show: str, ep: str, folder: int) -> list[Backup]:
        """``backups``, read in the backup ``folder`` held open."""
        directory = "/".join((self.root, *self._backup_parts(show, ep)))
        live = set()  # a write killed between linking the old file and its rename leaves a "backup"
        for p in self._paths(show, ep).files:  # that is the live file itself: no copy of anything
            try:
                st = os.lstat(p)
                live.add((st.st_dev, st.st_ino))
            except FileNotFoundError:
                pass
        out: list[Backup] = []
        for version, name in sorted(_backup_versions(os.listdir(folder)), reverse=True):
            path = os.path.join(directory, name)
            try:
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in live:
                continue
            problem = None
            try:
                raw = diskio.read_file(path, dir_fd=folder)
                if raw is None:
                    continue
                self._parse_episode(path, raw, show, ep)
            except (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError) as exc:
                problem = exc.one_line()
            out.append(Backup(number=len(out) + 1, version=version, path=path, size=st.st_size,
                              saved_at=datetime.fromtimestamp(st.st_mtime, timezone.utc), problem=problem))
        return out

    def _newest_valid_backup(self, show: str, ep: str) -> Backup | None:
        try:
            return next((b for b in self.backups(show, ep) if b.problem is None), None)
        except (StatekitError, OSError):
            return None

    def restore(self, show: str, ep: str, backup: int = 1) -> Episode:
        """Put backup number ``backup`` (1 = the newest; see ``backups``) back
        as the episode file, through the normal write path: version + 1 over
        the event log, one ``restore`` event. The file it replaces is kept
        too (a backup if it was valid, in ``.statekit/trash`` if it was not)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        if type(backup) is not int or backup < 1:
            raise ValidationError(f"backup must be a positive integer (1 = the newest), got {backup!r}")
        paths = self._paths(show, ep)
        if not folders.real_dirs(paths.chain):
            raise self._episode_missing(show, ep)
        with self._episode_lock(show, ep), self._episode_folder(show, ep) as folder, \
                self._open_existing(self._backup_parts(show, ep)) as kept:
            found = self._list_backups(show, ep, kept) if kept is not None else []
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
            source = self._parse_episode(chosen.path, diskio.read_file(chosen.path, dir_fd=kept) or b"", show, ep)
            path = next((p for p in paths.files if diskio.lexists(p, dir_fd=folder)), paths.files[0])
            if os.path.splitext(path)[1] != os.path.splitext(chosen.path)[1]:
                path = os.path.splitext(path)[0] + os.path.splitext(chosen.path)[1]
            current: Parsed | None = None
            raw = diskio.read_file(path, dir_fd=folder)
            if raw is not None:
                try:
                    current = self._parse_episode(path, raw, show, ep)
                except (CorruptFileError, ValidationError, SchemaVersionError):
                    current = None
                if current is not None:
                    self._refuse_if_held(current.model, "restored")
                else:
                    self._copy_to_trash(path, show, f"{ep}.{_stamp(self.clock())}.unreadable{os.path.splitext(path)[1]}",
                                        folder)
                    self._drop_live_links(show, ep, path, folder, kept)
            # the version the log is committed at: the file's, or if it cannot be read, the log's last
            committed = current.model.version if current is not None else max(
                eventlog.last_logged_version(paths.events, dir_fd=folder), 0)
            new = source.model.model_copy(update={"version": committed + 1, "updated_at": self.clock(),
                                                  "lease": None})
            event = {"kind": "restore", "message": f"restored backup {backup} (version {chosen.version})",
                     "from_stage": current.model.stage if current is not None else None, "to_stage": new.stage}
            return self._commit(path, current, new, event, committed=committed, template=source,
                                replaced=raw, folder=folder)

    def _drop_live_links(self, show: str, ep: str, path: str, folder: int, kept: int) -> None:
        """Remove "backups" that are the live file itself: a write killed between
        linking the old file and renaming the new one in leaves one, and once the
        file is replaced it would pass for a backup (of damage, if the file was
        damaged in place). The caller holds the episode lock, the episode's
        ``folder`` and its backup folder ``kept``."""
        directory = "/".join((self.root, *self._backup_parts(show, ep)))
        try:
            st = os.stat(os.path.basename(path), dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        for _version, name in _backup_versions(os.listdir(kept)):
            link = os.path.join(directory, name)
            try:
                other = os.stat(name, dir_fd=kept, follow_symlinks=False)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    self._disk.unlink(link, dir_fd=kept)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise diskio.storage_error(exc, link, "remove a leftover backup link") from exc

    def _copy_to_trash(self, path: str, show: str, name: str, folder: int) -> str:
        """Keep a file's current bytes (``path``, in ``folder`` held open) in
        ``.statekit/trash/<show>/`` (a hard link, durable) before it is replaced."""
        target = f"{self.root}/.statekit/trash/{show}/{name}"
        with self._open((".statekit", "trash", show), create=True) as trash:
            try:
                self._disk.link(path, target, src_dir_fd=folder, dst_dir_fd=trash)
                self._disk.fsync(trash)
            except OSError as exc:
                raise diskio.storage_error(exc, path, "keep a copy in the trash") from exc
        return target

    def _backups_to_trash(self, show: str, ep: str, stamp: str) -> None:
        """Move an episode's backup folder into the trash (it was deleted, or
        a new episode takes its id: old backups must not be restored into it)."""
        parts = self._backup_parts(show, ep)
        with self._open_existing(parts[:-1]) as parent:
            if parent is None:
                return
            try:
                st = os.stat(ep, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            source = "/".join((self.root, *parts))
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(f"refusing to follow a symlink at {source}", path=source)
            if not stat.S_ISDIR(st.st_mode):
                return
            with self._open((".statekit", "trash", show), create=True) as trash:
                diskio.move(self._disk, source, f"{self.root}/.statekit/trash/{show}/{ep}.{stamp}.backups",
                            src_dir_fd=parent, dst_dir_fd=trash)

    def gc(self, *, backups_older_than: timedelta, dry_run: bool = False) -> list[str]:
        """Remove backups saved more than ``backups_older_than`` ago (by
        their file time); the newest backup of an episode whose file cannot
        be read is always kept. Returns what was (or would be) removed."""
        return [r.path for r in self.gc_backups(backups_older_than=backups_older_than, dry_run=dry_run)]

    def gc_backups(self, *, backups_older_than: timedelta, dry_run: bool = False) -> list[assets.Removed]:
        """``gc``, saying how big each removed backup was."""
        if not isinstance(backups_older_than, timedelta) or backups_older_than.total_seconds() < 0:
            raise ValidationError(f"backups_older_than must be a non-negative timedelta, got {backups_older_than!r}")
        try:
            cutoff = (self.clock() - backups_older_than).timestamp()
        except OverflowError:
            raise ValidationError(f"backups_older_than is too large: {backups_older_than}",
                                  hint="give an age in days, e.g. 7d") from None
        base = (".statekit", "backups", "episodes")
        with self._open_existing(base) as top:  # UnsafePathError on a symlink
            shows = _subdirs(top) if top is not None else []
        removed = []
        for show in shows:
            with self._open_existing((*base, show)) as show_folder:
                eps = _subdirs(show_folder) if show_folder is not None else []
            for ep in eps:
                parts = (*base, show, ep)
                directory = "/".join((self.root, *parts))
                keep_one = not self._readable(show, ep)
                with self._open_existing(parts) as folder:
                    found = [] if folder is None else [
                        (name, os.stat(name, dir_fd=folder, follow_symlinks=False))
                        for _version, name in sorted(_backup_versions(os.listdir(folder)), reverse=True)]
                for index, (name, st) in enumerate(found):
                    path = os.path.join(directory, name)
                    if (keep_one and index == 0) or st.st_mtime >= cutoff:
                        continue
                    if not dry_run:
                        with self._episode_lock(show, ep), self._open_existing(parts) as folder:
                            if folder is None or not diskio.remove_file(self._disk, path, "remove backup",
                                                                        dir_fd=folder):
                                continue
                    removed.append(assets.Removed(os.path.relpath(path, self.root), st.st_size,
                                                  "old backup"))
        return removed

    def repair(self, *, dry_run: bool = False, progress: Progress | None = None) -> RepairReport:
        """Fix what can be fixed without a person, and say what was done:
        a damaged or invalid episode file gets its newest valid backup back;
        an uncommitted event tail (a torn line, or the event of a write that
        stopped before its file was replaced) is dropped; temp files of
        interrupted writes are removed; damaged checkpoints go to the trash
        (``resume`` then starts the stage afresh); finally the index is
        synced with the files (rebuilt if it cannot be read). Valid files
        are not touched. ``dry_run`` lists the actions without doing them."""
        report = RepairReport(dry_run=dry_run)
        act = report.actions.append
        for stale in diskio.temp_files(self.root, dir_fd=self._root_fd):  # statekit.yaml's own
            act(f"remove temp file {os.path.relpath(stale, self.root)}")
            if not dry_run:
                self._disk.unlink(stale, dir_fd=self._root_fd)
        work = []
        for show in self.shows():
            with self._show_lock(show), self._open_existing(("shows", show)) as folder:
                for stale in diskio.temp_files(os.path.join(self.root, "shows", show), dir_fd=folder) if folder else []:
                    act(f"remove temp file {os.path.relpath(stale, self.root)}")
                    if not dry_run:
                        self._disk.unlink(stale, dir_fd=folder)
            work += [(show, ep) for ep in _subdirs(os.path.join(self.root, "shows", show, "episodes"))]
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
            self.rebuild_index()
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
            self.rebuild_index()
        # what no step above can mend (a damaged event log, a backup that cannot be read): say so
        for p in found:
            if p.kind != "index" and not any(p.message in q or (p.episode and q.startswith(p.episode + ":"))
                                             for q in report.problems):
                report.problems.append(p.message)
        return report

    def _repair_episode(self, show: str, ep: str, report: RepairReport) -> None:
        act = report.actions.append
        dry_run = report.dry_run
        key = f"{show}/{ep}"
        paths = self._paths(show, ep)
        with self._episode_lock(show, ep):
            # its own folder, and its copies in migrate's backup folders (written under the same lock)
            with self._open_existing((".statekit", "backups")) as backups:
                migrates = [n for n in _subdirs(backups) if n.startswith("migrate-")] if backups is not None else []
            places: list[tuple[tuple[str, ...], str | None]] = [(("shows", show, "episodes", ep), "checkpoints")]
            places += [((".statekit", "backups", name, "shows", show, "episodes", ep), None) for name in migrates]
            for parts, nested in places:
                directory = "/".join((self.root, *parts))
                with self._open_existing(parts) as folder:  # no symlinked folder on the way
                    if folder is None:
                        continue
                    for stale in diskio.temp_files(directory, nested, dir_fd=folder):
                        act(f"remove temp file {os.path.relpath(stale, self.root)}")
                    if not dry_run:
                        diskio.remove_temp_files(self._disk, directory, nested, dir_fd=folder)
        path = next((p for p in paths.files if os.path.lexists(p)), None)
        readable = False
        if path is not None:
            try:
                self._parse_episode(path, diskio.read_file(path) or b"", show, ep)
                readable = True
            except SchemaVersionError as exc:
                report.problems.append(f"{key}: {exc.one_line()}")  # a newer statekit's file: not ours to fix
                return
            except (CorruptFileError, ValidationError) as exc:
                reason = exc.one_line()
            else:
                reason = ""
        else:
            reason = "the episode file is missing"
        if not readable:
            newest = self._newest_valid_backup(show, ep)
            if newest is None:
                report.problems.append(f"{key}: {reason}; no valid backup to restore, fix the file by hand")
                return
            act(f"restore {key} from backup {newest.number} (version {newest.version}): {reason}")
            if not dry_run:
                self.restore(show, ep, newest.number)
            else:
                return
        with self._episode_lock(show, ep), self._episode_folder(show, ep) as folder:
            _, parsed = self._load(show, ep, folder)
            tail = eventlog.uncommitted_tail(paths.events, parsed.model.version, dir_fd=folder)
            if tail:
                act(f"drop the uncommitted event tail of {key} ({tail} bytes of events.jsonl)")
                if not dry_run:
                    size = os.stat("events.jsonl", dir_fd=folder, follow_symlinks=False).st_size
                    eventlog.drop_tail(self._disk, paths.events, size - tail, dir_fd=folder)
                    parsed.log_size = None
            for stage in sorted(parsed.model.checkpoints.keys() | set(_checkpoint_stages(paths.dir))):
                cp = os.path.join(paths.dir, "checkpoints", stage + ".json")
                try:
                    read_checkpoint(cp)
                except (CorruptFileError, SchemaVersionError) as exc:
                    act(f"move the damaged checkpoint {os.path.relpath(cp, self.root)} to the trash: "
                        f"{exc.one_line()}")
                    if not dry_run:
                        target = f"{self.root}/.statekit/trash/{show}/{ep}.{_stamp(self.clock())}.checkpoint.{stage}.json"
                        with self._open(("shows", show, "episodes", ep, "checkpoints")) as checkpoints, \
                                self._open((".statekit", "trash", show), create=True) as trash:
                            diskio.move(self._disk, cp, target, src_dir_fd=checkpoints, dst_dir_fd=trash)

    def _readable(self, show: str, ep: str) -> bool:
        try:
            self._load(show, ep)
            return True
        except (CorruptFileError, ValidationError, SchemaVersionError):
            return False
        except StatekitError:
            return True  # gone, or not ours to judge: nothing to protect

    # --- creating and deleting ------------------------------------------------------

    def create(
        self,
        show: str,
        ep: str,
        *,
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        files: Mapping[str, str] | None = None,
    ) -> Episode:
        """A new episode at the pipeline's initial stage (version 1, one
        ``create`` event); its show is created on first use.

        ``DuplicateError`` if ``metadata`` holds a value of one of the store's
        unique keys (``unique:`` in statekit.yaml) that another episode has;
        ``update``, ``advance``, ``import_legacy`` and ``sync`` check the same
        (see ``statekit.unique`` for how values compare, ``_unique_claims``
        for the locks and what a stale index can miss)."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        now = self.clock()
        initial = self.pipeline.initial
        data = {
            "show_id": show, "episode_id": ep, "title": title, "stage": initial, "version": 1,
            "created_at": now, "updated_at": now, "stage_entered_at": now, "attempts": {initial: 1},
            "metadata": {} if metadata is None else metadata, "files": {} if files is None else files,
        }
        try:
            model = Episode.model_validate(data)
        except PydanticValidationError as exc:
            raise _invalid(exc, None, None, "episode") from None
        return self._create(model, {"kind": "create", "to_stage": initial})

    def _create(self, model: Episode, event: dict[str, Any]) -> Episode:
        """Write a new episode (show lock, then episode lock). A create that
        fails leaves no folder it made behind (an empty episode folder, or a
        new show's), so a failed create changes nothing."""
        show, ep = model.show_id, model.episode_id
        with self._show_lock(show):
            self._read_show(show)  # a damaged show.yaml stops the create before anything is written
            folders.check_dirs(self.root, ("shows", show, "episodes"))  # refuses a symlink; folders come later
            made = [d for d in self._paths(show, ep).chain[1:] if not os.path.lexists(d)]
            try:
                with self._episode_lock(show, ep):
                    if any(os.path.lexists(p) for p in self._episode_paths(show, ep)):
                        raise EpisodeExistsError(f"episode {show}/{ep} already exists", show_id=show,
                                                 episode_id=ep)
                    with self._unique_claims(show, ep, None, model.metadata):  # before any folder is made
                        self._backups_to_trash(show, ep, _stamp(self.clock()))  # left by an episode deleted by hand
                        with self._open(("shows", show, "episodes", ep), create=True) as folder:
                            path = self._episode_paths(show, ep)[0]
                            created = self._commit(path, None, model, event, folder=folder)
            except BaseException:
                self._undo_create_dirs(show, ep, made)
                raise
            self._list_in_show(show, lambda ids: ids if ep in ids else [*ids, ep])
        return created

    def _undo_create_dirs(self, show: str, ep: str, made: list[str]) -> None:
        """Remove the folders a failed create made (the caller holds the show
        lock, so no other create or delete is in them). The episode folder
        holds at most an event that no episode file committed (its append
        went through, the file's rename did not): it goes too. Best effort."""
        if any(os.path.lexists(p) for p in self._episode_paths(show, ep)):
            return  # the episode was written after all: nothing to undo
        for directory in reversed(made):
            parts = tuple(directory[len(self.root) + 1:].split("/"))
            try:  # in folders walked from the root: a symlink swapped in meanwhile is refused, not followed
                with self._open(parts[:-1]) as parent:
                    if directory == self._episode_dir(show, ep):
                        with self._open(parts) as folder:
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

    def delete(self, show: str, ep: str) -> str:
        """Remove an episode from its show. Its directory is moved (durably)
        into ``.statekit/trash/`` rather than erased; returns where it went."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        with self._show_lock(show):
            self._read_show(show)  # a damaged show.yaml stops the delete before anything moves
            with self._episode_lock(show, ep):
                if not any(os.path.lexists(p) for p in self._episode_paths(show, ep)):
                    raise self._episode_missing(show, ep)
                self._refuse_if_leased(show, ep, "deleted")
                target = f"{self.root}/.statekit/trash/{show}/{ep}.{_stamp(self.clock())}"
                source = self._episode_dir(show, ep)
                with self._open(("shows", show, "episodes")) as episodes, \
                        self._open((".statekit", "trash", show), create=True) as trash:
                    diskio.move(self._disk, source, target, src_dir_fd=episodes, dst_dir_fd=trash)
                self._forget(source + os.sep)
                self._index_quietly(f"the deletion of {show}/{ep}", removed=[(show, ep)])
                try:  # the episode is gone (durably): its backups follow, or stay for gc
                    self._backups_to_trash(show, ep, os.path.basename(target)[len(ep) + 1:])
                except (StatekitError, OSError) as exc:
                    log.warning("statekit: %s/%s was deleted, but its backups could not follow it to the "
                                "trash (%s); 'statekit gc' removes them later", show, ep, exc)
            self._list_in_show(show, lambda ids: [i for i in ids if i != ep])
        return target

    def _refuse_if_leased(self, show: str, ep: str, what: str) -> None:
        """``NotReadyError`` if a live stage run holds the episode (a damaged
        file holds no lease anyone could honour: it does not refuse)."""
        try:
            model = self._load(show, ep)[1].model
        except (CorruptFileError, ValidationError, SchemaVersionError):
            return
        self._refuse_if_held(model, what)

    def _refuse_if_held(self, model: Episode, what: str, now: datetime | None = None) -> None:
        lease = model.lease
        if lease is not None and (now or self.clock()) < lease.expires_at:
            raise NotReadyError(
                f"{model.key} is being run ({model.stage}) by {lease.owner} until {lease.expires_at.isoformat()}; "
                f"it cannot be {what} meanwhile", reason="leased", show_id=model.show_id,
                episode_id=model.episode_id, stage=model.stage,
                hint="wait for the run to finish, or for its lease to expire")

    # --- shows ----------------------------------------------------------------------

    def _episode_ids_on_disk(self, show: str) -> list[str]:
        directory = os.path.join(self.root, "shows", show, "episodes")
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and any(
                os.path.isfile(os.path.join(entry.path, "episode" + s)) for s in (".yaml", ".json")
            ):
                found.append(entry.name)
        return found

    def _read_show(self, show: str) -> tuple[Parsed | None, Show | None]:
        path = self._show_file(show)
        raw = diskio.read_file(path)
        if raw is None:
            return None, None
        parsed = self._cached(path, raw)
        if parsed is None:
            parsed = YAML_CODEC.parse(raw, path)
            schema_of(parsed.data, path, current=SHOW_SCHEMA, legacy_ok=False)
            try:
                parsed.model = Show.model_validate(parsed.data)
            except PydanticValidationError as exc:
                raise _invalid(exc, raw, path, "show") from None
            self._remember(path, parsed)
        return parsed, parsed.model

    @staticmethod
    def _reconcile(listed: list[str], on_disk: list[str]) -> list[str]:
        """The show's order: listed ids that exist, then unlisted ones by name
        (an episode directory is the truth; show.yaml only orders them)."""
        present = set(on_disk)
        ids = [i for i in dict.fromkeys(listed) if i in present]
        known = set(ids)
        return ids + [i for i in on_disk if i not in known]

    def _list_in_show(self, show: str, edit: Callable[[list[str]], list[str]]) -> None:
        """Update show.yaml's order after an episode came or went. The episode's
        own write is done and durable by then, and show.yaml only orders what
        the folders hold (it is reconciled on every read), so a failure here is
        logged, not raised: the caller's change stands."""
        try:
            self._edit_show(show, edit)
        except StorageError as exc:
            log.warning("statekit: could not update the episode order in show %s (%s); it is put right on the "
                        "next change to the show", show, exc.one_line())

    def _edit_show(self, show: str, edit: Callable[[list[str]], list[str]]) -> Show:
        """Rewrite show.yaml's episode list (caller holds the show lock)."""
        parsed, current = self._read_show(show)
        now = self.clock()
        if current is None:
            current = Show(show_id=show, title=show, created_at=now, updated_at=now)
        ids = self._reconcile(edit(list(current.episodes)), self._episode_ids_on_disk(show))
        if ids == current.episodes and parsed is not None:
            return current
        new = current.model_copy(update={"episodes": ids, "updated_at": now})
        stored = YAML_CODEC.dump(new.model_dump(mode="json"), parsed)
        path = self._show_file(show)
        try:
            with self._open(("shows", show)) as folder:
                st = diskio.atomic_write(self._disk, path, stored.raw, dir_fd=folder)
        except FileNotFoundError as exc:  # the show's folder is gone
            raise diskio.storage_error(exc, path, "write") from exc
        stored.model = new
        self._remember(path, stored)
        self._index_show(new, stored.raw, st)
        if ids[: len(current.episodes)] != current.episodes:  # not a plain append: renumber the order
            self._index_quietly(f"the order of show {show}", positions=(show, ids))
        return new

    def _index_show(self, show: Show, raw: bytes, st: os.stat_result) -> None:
        from .index import show_row

        row = show_row(show.model_dump(mode="json"), path=os.path.relpath(self._show_file(show.show_id), self.root),
                       size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=_sha256(raw), checked_at_ns=time.time_ns())
        self._index_quietly(f"show {show.show_id}", show_rows=[row])

    def _reconcile_show(self, show: str, on_disk: list[str]) -> list[str]:
        """Make show.yaml list exactly the episodes in its folder (listed ones
        first, in their order); its index row follows. Returns the order."""
        with self._show_lock(show):
            parsed, current = self._read_show(show)
            ids = self._reconcile(list(current.episodes) if current else [], sorted(on_disk))
            if current is None or ids != current.episodes:
                return self._edit_show(show, lambda _listed: ids).episodes
            st = os.stat(self._show_file(show))
            self._index_show(current, parsed.raw if parsed else b"", st)
            return ids

    def create_show(self, show: str, *, title: str | None = None, metadata: Mapping[str, Any] | None = None) -> Show:
        """Create a show with a title and metadata (creating an episode also creates its show)."""
        check_id(show, "show id")
        with self._show_lock(show):
            if self._read_show(show)[1] is not None:
                raise StatekitError(f"show {show!r} already exists", show_id=show, hint="pick another show id")
            now = self.clock()
            try:
                model = Show.model_validate({"show_id": show, "title": show if title is None else title,
                                             "created_at": now, "updated_at": now,
                                             "metadata": {} if metadata is None else metadata})
            except PydanticValidationError as exc:
                raise _invalid(exc, None, None, "show") from None
            self._make_dir(("shows", show, "episodes"))
            raw = YAML_CODEC.dump_plain(model.model_dump(mode="json"))
            with self._open(("shows", show)) as folder:
                self._index_show(model, raw, diskio.atomic_write(self._disk, self._show_file(show), raw, dir_fd=folder))
        return model

    def get_show(self, show: str) -> Show:
        """The show, its episode list reconciled with the episodes on disk."""
        check_id(show, "show id")
        if not folders.check_dirs(self.root, ("shows", show)):
            raise ShowNotFoundError(f"show {show!r} not found", show_id=show)
        _, model = self._read_show(show)
        on_disk = self._episode_ids_on_disk(show)
        if model is None:
            now = self.clock()
            model = Show(show_id=show, title=show, created_at=now, updated_at=now)
        return model.model_copy(update={"episodes": self._reconcile(model.episodes, on_disk)})

    def shows(self) -> list[str]:
        """Ids of the shows in the store, sorted."""
        try:
            entries = os.scandir(os.path.join(self.root, "shows"))
        except FileNotFoundError:
            return []
        with entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        out = []
        for name in sorted(names):
            try:
                out.append(check_id(name, "show id"))
            except InvalidIdError:
                continue  # not ours (e.g. a stray folder someone made)
        return out

    # --- moves and updates -------------------------------------------------------------

    def advance(
        self,
        show: str,
        ep: str,
        stage: str,
        *,
        message: str | None = None,
        cost: float | None = None,
        expected_version: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        files: Mapping[str, str] | None = None,
    ) -> Episode:
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
        check_id(stage, "stage")
        if message is not None and not isinstance(message, str):
            raise ValidationError(f"message must be text, got {type(message).__name__}",
                                  hint="pass a str or None; nothing was changed")
        check_text(message, "message")
        cost = _check_cost(cost)
        given = {k: v for k, v in (("metadata", metadata), ("files", files)) if v is not None}
        pipeline = self.pipeline

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            refusal = refuse_move(pipeline, m.stage, stage, m.approvals)
            if refusal is not None:
                raise refusal.error(refusal.message, show_id=m.show_id, episode_id=m.episode_id, stage=stage,
                                    **refusal.extra)
            self._refuse_if_held(m, "moved", now)
            costs = m.costs if cost is None else add_cost(m.costs, m.stage, cost, m.key)
            new = m.model_copy(update={
                "stage": stage, "previous_stage": m.stage, "version": m.version + 1, "updated_at": now,
                "stage_entered_at": now,
                "message": message, "costs": costs, "cost_total": cost_sum(costs),
                "attempts": {**m.attempts, stage: m.attempts.get(stage, 0) + 1},
                "approvals": approvals_after_move(pipeline, stage, m.approvals),
                # a move starts the new stage afresh: no lease, backoff, hold or done mark carries over
                "lease": None, "due_at": None, "hold": None, "stage_done": False,
            })
            event: dict[str, Any] = {"kind": "advance", "from_stage": m.stage, "to_stage": stage,
                                     "message": message, "cost": cost}
            if given:
                new, changed = _with_fields(new, given)
                event["fields"] = changed or None
            return new, event

        return self._write(show, ep, change, expected_version)

    def update(
        self,
        show: str,
        ep: str,
        *,
        title: str = _UNSET,
        metadata: Mapping[str, Any] = _UNSET,
        files: Mapping[str, str] = _UNSET,
        message: str | None = _UNSET,
        expected_version: int | None = None,
    ) -> Episode:
        """Replace non-stage fields (each given field is replaced whole).

        Nothing is written when nothing changes; otherwise one ``update``
        event naming the changed fields. A value of a unique key that another
        episode has is refused (``DuplicateError``, as ``create`` says).
        """
        given = {k: v for k, v in (("title", title), ("metadata", metadata), ("files", files),
                                   ("message", message)) if v is not _UNSET}
        if not given:
            raise ValidationError("update needs at least one of title, metadata, files, message")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            new, changed = _with_fields(m, given)
            if not changed:
                return None
            return new.model_copy(update={"version": m.version + 1, "updated_at": now}), {
                "kind": "update", "fields": changed}

        return self._write(show, ep, change, expected_version)

    def approve(self, show: str, ep: str, stage: str, *, by: str, note: str | None = None,
                expected_version: int | None = None) -> Episode:
        """Record a person's approval to enter the gated ``stage`` (one
        ``approve`` event). It holds until the episode goes back to a stage
        listed before the gate."""
        self._check_stage(stage)
        if stage not in self.pipeline.gates:
            raise ValidationError(
                f"stage {stage!r} has no approval gate in pipeline {self.pipeline.name!r}",
                hint="gated stages: " + (", ".join(self.pipeline.gates) or "none"),
            )
        if not isinstance(by, str) or not by.strip():
            raise ValidationError("approve needs the name of the person approving (by=...)",
                                  hint="pass by='their name'; nothing was changed")
        if note is not None and not isinstance(note, str):
            raise ValidationError(f"note must be text, got {type(note).__name__}",
                                  hint="pass a str or None; nothing was changed")
        check_text(by, "by")
        check_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            try:
                approval = Approval(by=by.strip(), at=now, given_at_stage=m.stage, note=note)
            except PydanticValidationError as exc:
                raise _invalid(exc, None, None, "approval") from None
            new = m.model_copy(update={"version": m.version + 1, "updated_at": now,
                                       "approvals": {**m.approvals, stage: approval}})
            return new, {"kind": "approve", "gate": stage, "by": approval.by, "message": note}

        return self._write(show, ep, change, expected_version)

    # --- checkpoints -------------------------------------------------------------------

    def _checkpoint_path(self, show: str, ep: str, stage: str) -> str:
        return os.path.join(self._episode_dir(show, ep), "checkpoints", stage + ".json")

    def save_checkpoint(self, show: str, ep: str, stage: str, data: Mapping[str, Any]) -> Episode:
        """Write ``checkpoints/<stage>.json`` durably, then record its hash in
        the episode (version + 1, one ``checkpoint`` event).

        The file carries its own sha256, so damage is caught on load.
        """
        return self._save_checkpoint(show, ep, stage, data)

    def _save_checkpoint(self, show: str, ep: str, stage: str, data: Mapping[str, Any], *,
                         extra: Callable[[Episode, datetime], dict[str, Any]] | None = None,
                         event_extra: Mapping[str, Any] | None = None) -> Episode:
        """``save_checkpoint``; ``extra(current, now)`` may refuse the write
        (raise) or return more fields to change in the same write."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        self._check_stage(stage)
        if not isinstance(data, Mapping):
            raise ValidationError(f"checkpoint data must be a mapping, got {type(data).__name__}")
        payload = dict(data)
        try:
            canonical = _canonical(payload)
        except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
            where = find_bad_text(payload, "checkpoint data")
            if where is not None:
                raise ValidationError(where, field="data", hint=NOT_UTF8_HINT) from None
            raise ValidationError(f"checkpoint data must be JSON (finite numbers, text keys): {exc}",
                                  field="data") from None
        digest = _sha256(canonical)

        def write_file(new: Episode) -> None:
            body = {"schema_version": CHECKPOINT_SCHEMA, "stage": stage,
                    "saved_at": new.updated_at.isoformat(), "sha256": digest, "size": len(canonical),
                    "data": payload}
            with self._open(("shows", show, "episodes", ep, "checkpoints"), create=True) as folder:
                diskio.atomic_write(self._disk, self._checkpoint_path(show, ep, stage), JSON_CODEC.dump_plain(body),
                                    dir_fd=folder)

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            more = extra(m, now) if extra is not None else {}
            record = CheckpointRecord(sha256=digest, size=len(canonical), at=now)
            new = m.model_copy(update={**more, "version": m.version + 1, "updated_at": now,
                                       "checkpoints": {**m.checkpoints, stage: record}})
            return new, {"kind": "checkpoint", "checkpoint": stage, **(event_extra or {})}

        return self._write(show, ep, change, before_commit=write_file)

    def load_checkpoint(self, show: str, ep: str, stage: str) -> dict[str, Any] | None:
        """The data saved for ``stage``, or None if none was saved.

        ``CorruptFileError`` (naming the file) if it is damaged.
        """
        check_id(show, "show id")
        check_id(ep, "episode id")
        self._check_stage(stage)
        if not folders.real_dirs(self._paths(show, ep).chain):
            raise self._episode_missing(show, ep)
        return read_checkpoint(self._checkpoint_path(show, ep, stage))

    def resume_stage(self, show: str, ep: str) -> str | None:
        """The latest stage (in pipeline order) whose checkpoint is intact:
        where a restarted worker picks up. None if there is none."""
        for stage in reversed(list(self.pipeline.stages)):
            try:
                if self.load_checkpoint(show, ep, stage) is not None:
                    return stage
            except (CorruptFileError, SchemaVersionError):
                continue
        return None

    # --- assets ---------------------------------------------------------------------------

    def add_asset(self, show: str, ep: str, source: bytes | str | os.PathLike[str], kind: str = "audio",
                  name: str | None = None, *, media_type: str | None = None, label: str | None = None,
                  _extra: Callable[[Episode, datetime], dict[str, Any]] | None = None,
                  _event_extra: Mapping[str, Any] | None = None) -> Episode:
        """Store ``source`` (a path, read in chunks, or bytes) once, by its
        sha256, and record it in the episode as ``assets[name]`` (version + 1,
        one ``asset`` event). The same content added anywhere else is the
        same object. ``name`` defaults to the source's file name (or
        ``kind``); an existing name is replaced and its upload record, which
        described the old content, dropped. ``label``: what to record as the
        source (defaults to the path given). The object is durable before
        the episode names it; a hard link to it appears as
        ``episodes/<ep>/assets/<name>`` for people to open."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        check_id(kind, "asset kind")
        if isinstance(source, (bytes, bytearray, memoryview)):
            data: bytes | None = bytes(source)
            path = None
        elif isinstance(source, (str, os.PathLike)):
            data = None
            path = os.fspath(source)
            if not isinstance(path, str) or not path:
                raise ValidationError(f"asset source must be a file path or bytes, got {source!r}")
        else:
            raise ValidationError(f"asset source must be a file path or bytes, got {type(source).__name__}")
        if name is None:
            name = legacy_id(os.path.basename(path)) if path else kind
        check_id(name, "asset name")
        if media_type is None:
            media_type = assets.guess_media_type(path or name)
        elif not isinstance(media_type, str) or not re.fullmatch(r"[\w.+-]+/[\w.+-]+", media_type):
            raise ValidationError(f"media_type must look like 'audio/wav', got {media_type!r}")
        if label is None:  # a file name need not be UTF-8; what is recorded must be
            label = os.path.abspath(path).encode("utf-8", "backslashreplace").decode("utf-8") if path else None
        elif not isinstance(label, str) or len(label) > 4096:
            raise ValidationError("label must be text of at most 4096 characters",
                                  hint="leave it out to record the source path; nothing was changed")
        check_text(label, "label")
        if not folders.real_dirs(self._paths(show, ep).chain):
            raise self._episode_missing(show, ep)
        root_fd = self._root_fd
        with assets.objects_lock(self._disk, self.root, root_fd=root_fd, exclusive=False,
                                 timeout=self.config.lock_timeout):
            stored = (assets.put_bytes(self._disk, self.root, data, root_fd=root_fd) if data is not None
                      else assets.put_file(self._disk, self.root, path, root_fd=root_fd))  # type: ignore[arg-type]
            assets.write_sidecar(self._disk, self.root, stored, root_fd=root_fd, media_type=media_type,
                                 source=label, now=self.clock())

            def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
                more = _extra(m, now) if _extra is not None else {}
                old = m.assets.get(name)
                if old is not None and old.sha256 == stored.sha256 and old.kind == kind and not more:
                    return None  # already recorded: nothing to write
                record = AssetRecord(sha256=stored.sha256, size=stored.size, kind=kind, media_type=media_type,
                                     source=label, added_at=now)
                uploads = m.uploads
                if name in uploads and uploads[name].sha256 != stored.sha256:
                    uploads = {k: v for k, v in uploads.items() if k != name}
                new = m.model_copy(update={**more, "version": m.version + 1, "updated_at": now,
                                           "assets": {**m.assets, name: record}, "uploads": uploads})
                return new, {"kind": "asset", "asset": name, "content_sha256": stored.sha256, "size": stored.size,
                             "replaced": old.sha256 if old is not None and old.sha256 != stored.sha256 else None,
                             **(_event_extra or {})}

            episode = self._write(show, ep, change)
        self._link_asset(show, ep, name, stored.sha256)
        return episode

    def _link_asset(self, show: str, ep: str, name: str, sha: str) -> None:
        """``episodes/<ep>/assets/<name>``: a hard link to the object ``sha`` (no copy),
        for people; best effort (the episode file is what counts)."""
        target = assets.object_path(self.root, sha)
        try:
            with self._open(("shows", show, "episodes", ep, "assets"), create=True) as folder, \
                    self._open((assets.OBJECTS, sha[:2])) as objects:
                directory = f"{self._episode_dir(show, ep)}/assets"
                link = os.path.join(directory, name)
                try:
                    if os.path.samestat(os.stat(name, dir_fd=folder, follow_symlinks=False),
                                        os.stat(sha, dir_fd=objects, follow_symlinks=False)):
                        return
                except FileNotFoundError:
                    pass
                tmp = os.path.join(directory, f"{diskio.TEMP_PREFIX}{name}.{os.getpid()}{diskio.TEMP_SUFFIX}")
                try:
                    self._disk.link(target, tmp, src_dir_fd=objects, dst_dir_fd=folder)
                    self._disk.replace(tmp, link, src_dir_fd=folder, dst_dir_fd=folder)
                finally:
                    if diskio.lexists(tmp, dir_fd=folder):
                        os.unlink(os.path.basename(tmp), dir_fd=folder)
                self._disk.fsync(folder)
        except (StatekitError, OSError) as exc:
            log.info("statekit: no link to asset %s in %s/%s (%s); the asset is in %s", name, show, ep, exc,
                     os.path.relpath(target, self.root))

    def _asset_record(self, show: str, ep: str, name: str) -> AssetRecord:
        check_id(name, "asset name")
        record = self.get(show, ep).assets.get(name)
        if record is None:
            raise AssetNotFoundError(f"{show}/{ep} has no asset {name!r}", show_id=show, episode_id=ep,
                                     hint=f"see its assets with 'statekit asset list {show}/{ep}'")
        return record

    def asset_path(self, show: str, ep: str, name: str) -> str:
        """Where asset ``name``'s content is (read it, never write it)."""
        return assets.object_path(self.root, self._asset_record(show, ep, name).sha256)

    def verify_asset(self, show: str, ep: str, name: str) -> str:
        """Hash asset ``name`` and return its path; ``CorruptFileError`` with
        the path if it is missing or its content changed."""
        record = self._asset_record(show, ep, name)
        return assets.check_object(self.root, record.sha256, record.size, what=f"asset {name!r} of {show}/{ep}",
                                   show_id=show, episode_id=ep)

    def remove_asset(self, show: str, ep: str, name: str) -> Episode:
        """Forget asset ``name`` (one ``asset_removed`` event); ``gc`` removes
        its content once nothing refers to it."""
        check_id(name, "asset name")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            if name not in m.assets:
                raise AssetNotFoundError(f"{m.key} has no asset {name!r}", show_id=show, episode_id=ep)
            new = m.model_copy(update={
                "version": m.version + 1, "updated_at": now,
                "assets": {k: v for k, v in m.assets.items() if k != name},
                "uploads": {k: v for k, v in m.uploads.items() if k != name}})
            return new, {"kind": "asset_removed", "asset": name}

        episode = self._write(show, ep, change)
        link = os.path.join(self._episode_dir(show, ep), "assets", name)
        try:
            with self._open_existing(("shows", show, "episodes", ep, "assets")) as folder:
                if folder is not None and diskio.lexists(link, dir_fd=folder):
                    self._disk.unlink(link, dir_fd=folder)
        except (StatekitError, OSError) as exc:
            log.info("statekit: could not remove %s (%s)", link, exc)
        return episode

    def record_uploads(self, show: str, ep: str, uploads: Mapping[str, UploadRecord | Mapping[str, Any]], *,
                       _extra: Callable[[Episode, datetime], dict[str, Any]] | None = None,
                       _event_extra: Mapping[str, Any] | None = None) -> Episode:
        """Record where assets were uploaded (one write, one ``upload``
        event). Each key names an asset of the episode, and each record's
        ``sha256`` must be that asset's content: an upload of older content
        is refused."""
        if not isinstance(uploads, Mapping) or not uploads:
            raise ValidationError("uploads must be a non-empty mapping of asset name to upload record")
        records: dict[str, UploadRecord] = {}
        for name, value in uploads.items():
            check_id(name, "asset name")
            try:
                records[name] = value if isinstance(value, UploadRecord) else UploadRecord.model_validate(value)
            except PydanticValidationError as exc:
                raise ValidationError(f"upload record for {name!r}: {exc.errors()[0]['msg']}") from None

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            more = _extra(m, now) if _extra is not None else {}
            for name, record in records.items():
                asset = m.assets.get(name)
                if asset is None:
                    raise AssetNotFoundError(f"{m.key} has no asset {name!r}", show_id=show, episode_id=ep)
                if asset.sha256 != record.sha256:
                    raise ValidationError(
                        f"asset {name!r} of {m.key} is not the content that was uploaded (sha256 "
                        f"{record.sha256[:12]}…, the asset is now {asset.sha256[:12]}…); the upload record was refused",
                        show_id=show, episode_id=ep, hint="upload the asset's current content again")
            if all(m.uploads.get(n) == r for n, r in records.items()) and not more:
                return None
            new = m.model_copy(update={**more, "version": m.version + 1, "updated_at": now,
                                       "uploads": {**m.uploads, **records}})
            return new, {"kind": "upload", "assets": sorted(records),
                         "urls": [records[n].url for n in sorted(records)], **(_event_extra or {})}

        return self._write(show, ep, change)

    def gc_objects(self, *, dry_run: bool = False, ignoring: set[str] | frozenset[str] = frozenset()
                   ) -> assets.ObjectsReport:
        """Remove stored objects no file refers to (episode files, their
        backups, the trash), their sidecars, and temp files interrupted
        writes left in the object folder. Holds the object lock
        exclusively, so no ``add_asset`` is half way meanwhile.
        ``ignoring``: files to count as gone (a dry run of a backup gc)."""
        report = assets.ObjectsReport()
        if not folders.check_dirs(self.root, (assets.OBJECTS,)):
            return report
        with assets.objects_lock(self._disk, self.root, root_fd=self._root_fd, exclusive=True,
                                 timeout=max(self.config.lock_timeout, 30.0)):
            referenced = self._referenced_objects(ignoring)
            top = os.path.join(self.root, assets.OBJECTS)
            with self._open((assets.OBJECTS,)) as objects:
                doomed: list[tuple[str, int, str]] = [
                    (p, os.stat(os.path.basename(p), dir_fd=objects, follow_symlinks=False).st_size,
                     "interrupted write") for p in diskio.temp_files(top, dir_fd=objects)]
            for sha, path, st in assets.stored_objects(self.root):
                if sha and not path.endswith(".json"):
                    report.objects += 1
                if sha and sha in referenced:
                    if not path.endswith(".json"):
                        report.referenced += 1
                    continue
                if sha:
                    doomed.append((path, st.st_size, "unreferenced" if not path.endswith(".json")
                                   else "sidecar of an unreferenced object"))
                elif diskio.TEMP_SUFFIX in path:
                    doomed.append((path, st.st_size, "interrupted write"))
            for path, size, reason in doomed:
                if not dry_run:
                    # the folder is walked again from the root: it may have been swapped for a symlink meanwhile
                    with self._open_existing(tuple(os.path.relpath(os.path.dirname(path), self.root).split(os.sep))
                                             ) as folder:
                        if folder is None or not diskio.remove_file(self._disk, path, "remove object", dir_fd=folder):
                            continue
                report.removed.append(assets.Removed(os.path.relpath(path, self.root), size, reason))
        return report

    def gc_run_temp(self, *, dry_run: bool = False) -> list[assets.Removed]:
        """Remove the temp folders (``run.temp_path()``) of runs that are no
        longer live: a worker killed before its ``finally`` could run."""
        top = os.path.join(self.root, ".statekit", "tmp", "runs")
        if not folders.check_dirs(self.root, (".statekit", "tmp", "runs")):
            return []
        now = self.clock()
        live = {e.lease.run_id for e in self.list() if e.lease is not None and e.lease.expires_at > now}
        removed = []
        with self._open_existing((".statekit", "tmp", "runs")) as runs:
            for run_id in _subdirs(runs) if runs is not None else []:
                if run_id in live:
                    continue
                path = os.path.join(top, run_id)
                size = 0
                for _directory, _dirs, names, fd in os.fwalk(run_id, dir_fd=runs):  # never follows a symlink
                    size += sum(os.stat(n, dir_fd=fd, follow_symlinks=False).st_size for n in names)
                if not dry_run:
                    shutil.rmtree(run_id, ignore_errors=True, dir_fd=runs)
                removed.append(assets.Removed(os.path.relpath(path, self.root), size, "temp files of a stopped run"))
        return removed

    def _referenced_objects(self, ignoring: set[str] | frozenset[str] = frozenset()) -> set[str]:
        """Every sha256 named by an episode file, a backup or anything in the
        trash (read as text: a damaged file still keeps its objects)."""
        found: set[str] = set()
        places = [os.path.join(self.root, "shows"), os.path.join(self.root, ".statekit", "backups"),
                  os.path.join(self.root, ".statekit", "trash")]
        for top in places:
            for directory, dirs, names in os.walk(top):
                dirs[:] = [d for d in dirs if d not in ("assets", "checkpoints")]
                for name in names:
                    path = os.path.join(directory, name)
                    if path in ignoring:
                        continue
                    if name.startswith("episode") and (name.endswith((".yaml", ".json")) or ".v" in name):
                        raw = diskio.read_file(path, limit=None)
                        if raw is not None:
                            found |= assets.referenced_hashes(raw)
        return found

    # --- leased stage runs -------------------------------------------------------------

    def run(self, show: str, ep: str, stage: str, *, owner: str | None = None,
            lease_seconds: float | None = None, reraise: bool = True,
            verify_assets: tuple[str, ...] | list[str] = ()) -> Run:
        """A leased run of ``stage``, as a context manager::

            with store.run("oliver", "ep001", "downloading") as run:
                data = run.resume or {}          # what an earlier attempt saved
                ...
                run.checkpoint({"part": 3}, cost=0.02)

        Entering moves the episode into ``stage`` (a legal move, counting an
        attempt; or starts it where it is, if it waits there) under a lease
        of ``lease_seconds`` (the pipeline's ``retry.lease_seconds`` by
        default) that every write of the run renews. Leaving moves it to the
        stage's success target (``pipeline.runs``), or marks the stage done
        when there is none or the target's gate is not approved yet. An
        exception is classified and recorded, and the episode goes to the
        failure stage: due again after a backoff, held for a person, or
        skipped (see ``plan_failure``). The exception is raised again unless
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
        """
        check_id(show, "show id")
        check_id(ep, "episode id")
        self._check_stage(stage)
        if stage not in self.pipeline.runs:
            raise ValidationError(
                f"stage {stage!r} is not run by workers in pipeline {self.pipeline.name!r}",
                hint="run stages: " + (", ".join(self.pipeline.runs) or "none (the pipeline declares no runs)"),
            )
        if owner is None:
            owner = default_owner()
        if not isinstance(owner, str) or not owner.strip() or len(owner) > 200:
            raise ValidationError(f"owner must be 1-200 characters of text, got {owner!r}",
                                  hint="name the worker, e.g. 'host:pid', or leave it out; nothing was changed")
        check_text(owner, "owner")
        if lease_seconds is None:
            lease_seconds = self.pipeline.retry.lease_seconds
        if (isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float))
                or not 0 < lease_seconds <= 7 * 86400):
            raise ValidationError(f"lease_seconds must be a number of seconds in (0, 604800], got {lease_seconds!r}")
        if isinstance(verify_assets, str) or not isinstance(verify_assets, (tuple, list)):
            raise ValidationError(f"verify_assets must be a list of asset names, got {verify_assets!r}")
        for name in verify_assets:
            check_id(name, "asset name")
        return Run(self, show, ep, stage, owner=owner.strip(), lease_seconds=float(lease_seconds), reraise=reraise,
                   verify_assets=tuple(verify_assets))

    def _start_run(self, run: Run) -> Episode:
        pipeline = self.pipeline
        stage = run.stage

        def start(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            ctx = {"show_id": m.show_id, "episode_id": m.episode_id, "stage": stage}
            if m.lease is not None:
                if now >= m.lease.expires_at:
                    raise _LeaseRanOut()
                raise NotReadyError(
                    f"{m.key} is being run ({m.stage}) by {m.lease.owner} until {m.lease.expires_at.isoformat()}",
                    reason="leased", hint="ask store.next() for episodes that are ready", **ctx)
            if m.hold is not None:
                raise NotReadyError(f"{m.key} is held for a person: {m.hold}", reason="hold",
                                    hint=f"fix the cause, then run 'statekit retry {m.key}'", **ctx)
            if m.due_at is not None and now < m.due_at:
                raise NotReadyError(f"{m.key}'s retry is not due until {m.due_at.isoformat()}", reason="due",
                                    hint=f"wait, or run 'statekit retry {m.key}' to retry now", **ctx)
            if m.stage == stage and m.stage_done:
                raise NotReadyError(f"{m.key} has already done stage {stage!r}", reason="done", **ctx)
            update: dict[str, Any] = {}
            moved = m.stage != stage
            if moved:
                refusal = refuse_move(pipeline, m.stage, stage, m.approvals)
                if refusal is not None and pipeline.rank(m.stage) > pipeline.rank(stage):
                    # past the stage: the worker's next() answer went stale, its request was right then
                    raise NotReadyError(
                        f"{m.key} is at stage {m.stage!r} now, past {stage!r} (another worker ran it, or it "
                        "was moved on)", reason="moved_on", current_stage=m.stage,
                        hint="ask store.next() for episodes that are ready", **ctx)
                if refusal is not None:
                    raise refusal.error(refusal.message, **ctx, **refusal.extra)
                update = {"stage": stage, "previous_stage": m.stage, "stage_entered_at": now,
                          "attempts": {**m.attempts, stage: m.attempts.get(stage, 0) + 1},
                          "approvals": approvals_after_move(pipeline, stage, m.approvals)}
            lease = Lease(owner=run.owner, run_id=run.run_id, acquired_at=now,
                          expires_at=now + timedelta(seconds=run.lease_seconds))
            new = m.model_copy(update={**update, "version": m.version + 1, "updated_at": now, "lease": lease,
                                       "due_at": None, "hold": None, "stage_done": False, "message": None})
            return new, {"kind": "start", "from_stage": m.stage if moved else None, "to_stage": stage if moved
                         else None, "owner": run.owner, "run_id": run.run_id,
                         "attempt": new.attempts.get(stage, 0), "lease_expires_at": lease.expires_at.isoformat()}

        try:
            return self._write(run.show_id, run.episode_id, start)
        except _LeaseRanOut:  # its last worker stopped: record that first, then start
            line = self._recover_one(run.show_id, run.episode_id)
            if line is not None and line.get("action") == "give_up":
                raise NotReadyError(
                    f"{run.show_id}/{run.episode_id}'s last worker stopped and its attempts are used up: "
                    "it was given up", reason="gave_up", show_id=run.show_id, episode_id=run.episode_id,
                    stage=stage, hint=f"see why with 'statekit show {run.show_id}/{run.episode_id}' or "
                                      "'statekit errors'") from None
        try:
            return self._write(run.show_id, run.episode_id, start)
        except _LeaseRanOut:
            raise NotReadyError(f"{run.show_id}/{run.episode_id} changed hands while starting; ask next() again",
                                reason="leased") from None

    def _finish_run(self, run: Run) -> Episode:
        pipeline = self.pipeline
        stage = run.stage

        def finish(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            run.check(m, now)
            target = pipeline.run_target(stage)
            update: dict[str, Any] = {"version": m.version + 1, "updated_at": now, "lease": None,
                                      "message": run.message}
            if target is not None and refuse_move(pipeline, stage, target, m.approvals) is None:
                update.update(stage=target, previous_stage=stage, stage_entered_at=now, stage_done=False,
                              attempts={**m.attempts, target: m.attempts.get(target, 0) + 1},
                              approvals=approvals_after_move(pipeline, target, m.approvals))
            else:
                target = None
                update["stage_done"] = True
            return m.model_copy(update=update), {
                "kind": "finish", "from_stage": stage if target else None, "to_stage": target,
                "message": run.message, "run_id": run.run_id, "seconds": round(run.elapsed(), 3)}

        return self._write(run.show_id, run.episode_id, finish)

    def _fail_run(self, run: Run, exc: BaseException, kind: ErrorKind | None) -> tuple[Episode, ErrorKind]:
        pipeline = self.pipeline
        line: dict[str, Any] = {}

        def fail(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            run.check(m, now)
            new, event, record = plan_failure(pipeline, m, run.stage, exc, now, kind=kind, run_id=run.run_id)
            line.update(record, owner=run.owner)
            return new, event

        try:
            episode = self._write(run.show_id, run.episode_id, fail)
        except StatekitError as write_error:
            log.error("statekit: the failure of %s/%s %s could not be recorded (%s); the episode is recovered "
                      "when its lease expires", run.show_id, run.episode_id, run.stage, write_error.one_line())
            raise write_error from exc
        self._record_error(line, exc)
        if line["action"] == "give_up":
            episode = self._give_up(run.show_id, run.episode_id) or episode
        return episode, ErrorKind(line["kind"])

    def _give_up(self, show: str, ep: str) -> Episode | None:
        """Complete a give-up: failure stage -> give-up stage (one ``give_up`` event)."""
        pipeline = self.pipeline
        done: list[bool] = []

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            if not giving_up(pipeline, m):
                return None
            done.append(True)
            return plan_give_up(pipeline, m, now)

        episode = self._write(show, ep, change)
        return episode if done else None

    def _recover_one(self, show: str, ep: str) -> dict[str, Any] | None:
        """If the episode's lease has expired, record the interrupted run
        (one ``recovered`` event) and apply the failure policy."""
        pipeline = self.pipeline
        line: dict[str, Any] = {}
        cause: list[BaseException] = []

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            if m.lease is None or now < m.lease.expires_at:
                return None
            why = interrupted(m)
            cause.append(why)
            new, event, record = plan_failure(pipeline, m, m.stage, why, now, kind=ErrorKind.INTERRUPTED,
                                              run_id=m.lease.run_id, event_kind="recovered")
            line.update(record, owner=m.lease.owner)
            return new, event

        self._write(show, ep, change)
        if not line:
            return None
        self._record_error(line, cause[0])
        if line["action"] == "give_up":
            self._give_up(show, ep)
        return line

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
        pipeline = self.pipeline
        for show, ep in self.index.expired_leases(self.clock()):
            try:
                line = self._recover_one(show, ep)
            except StatekitError as exc:
                report.problems.append(f"{show}/{ep}: {exc.one_line()}")
                continue
            if line is not None:
                report.recovered.append({"episode": f"{show}/{ep}", "stage": line["stage"],
                                         "owner": line.get("owner"), "action": line["action"],
                                         "attempt": line.get("attempt"), "due_at": line.get("due_at")})
                if line["action"] == "give_up":
                    report.gave_up.append(f"{show}/{ep}")
        if pipeline.failure_stage is not None:
            for doc in self.index.episode_data(stage=pipeline.failure_stage):
                m = Episode.model_validate(doc)
                if giving_up(pipeline, m) and m.key not in report.gave_up:
                    try:
                        if self._give_up(m.show_id, m.episode_id) is not None:
                            report.gave_up.append(m.key)
                    except StatekitError as exc:
                        report.problems.append(f"{m.key}: {exc.one_line()}")
        return report

    def retry_now(self, show: str, ep: str, *, by: str | None = None, note: str | None = None) -> Episode:
        """Release an episode for its next attempt now: clears a hold (after a
        person fixed the cause) or a retry's remaining backoff (one ``retry``
        event). ``next()`` hands it out again."""
        if by is not None and (not isinstance(by, str) or not by.strip()):
            raise ValidationError("by must be the name of the person releasing the episode",
                                  hint="pass by='their name', or leave it out; nothing was changed")
        if note is not None and not isinstance(note, str):
            raise ValidationError(f"note must be text, got {type(note).__name__}",
                                  hint="pass a str or None; nothing was changed")
        check_text(by, "by")
        check_text(note, "note")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            if m.hold is None and (m.due_at is None or m.due_at <= now):
                raise ValidationError(
                    f"{m.key} is not waiting for a retry (stage {m.stage!r}, no hold, no backoff)",
                    hint="'statekit show SHOW/EP' shows its state; 'statekit next STAGE' lists what is ready",
                    show_id=m.show_id, episode_id=m.episode_id)
            new = m.model_copy(update={"hold": None, "due_at": None, "version": m.version + 1, "updated_at": now})
            return new, {"kind": "retry", "message": note, "by": by.strip() if by else None,
                         "released": "hold" if m.hold is not None else "backoff"}

        return self._write(show, ep, change)

    def _record_error(self, line: dict[str, Any], exc: BaseException) -> None:
        """One line in ``.statekit/errors.jsonl`` and one log record. The
        episode's ``error_history`` (already durable) is the truth; this log
        is for people and log shippers, so a failure to write it is only
        logged."""
        log_failure(log, line, exc)
        path = os.path.join(self.root, ".statekit", "errors.jsonl")
        try:
            with self._open((".statekit",)) as folder:
                fd = self._disk.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | diskio.O_NOFOLLOW
                                     | diskio.O_CLOEXEC, dir_fd=folder)
            try:
                diskio.write_all(self._disk, fd, eventlog.event_line(line))
            finally:
                self._disk.close(fd)
        except (OSError, StatekitError) as exc_:
            log.warning("statekit: could not append to %s (%s)", path, exc_)

    def error_log(self) -> list[dict[str, Any]]:
        """The lines of ``.statekit/errors.jsonl``, oldest first (damaged lines skipped)."""
        raw = diskio.read_file(os.path.join(self.root, ".statekit", "errors.jsonl"), limit=None)
        out = []
        for line in (raw or b"").splitlines():
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    # --- questions about many episodes (answered by the index) ----------------------

    def _models(self, docs: list[dict[str, Any]]) -> list[Episode]:
        return [Episode.model_validate(d) for d in docs]

    def _known_show(self, show: str | None) -> None:
        if show is not None:
            check_id(show, "show id")
            if not folders.check_dirs(self.root, ("shows", show)):
                raise ShowNotFoundError(f"show {show!r} not found", show_id=show)

    def counts(self, show: str | None = None) -> dict[str, int]:
        """Number of episodes per stage, every pipeline stage listed (from the index)."""
        self._known_show(show)
        return self.index.counts(show)

    def next(self, stage: str, limit: int = 10) -> list[Episode]:
        """Episodes ready for ``stage``, longest-waiting first: what a worker
        for that stage asks for, then runs with ``run``. A retry from
        ``failed`` waits for the stage that failed and for its backoff; an
        episode a live worker holds (its lease not yet expired) is never
        handed out; a gated stage waits for its approval; a held episode
        waits for a person."""
        self._check_stage(stage)
        if type(limit) is not int or limit < 1:
            raise ValidationError(f"limit must be a positive integer, got {limit!r}")
        return self._models(self.index.next(stage, limit, self.clock()))

    def costs(self, by: str = "stage", show: str | None = None) -> dict[str, float]:
        """Money spent so far per stage (``by="stage"``) or per show (``by="show"``)."""
        if by not in ("stage", "show"):
            raise ValidationError(f"costs by {by!r}: choose 'stage' or 'show'")
        self._known_show(show)
        return self.index.costs(by, show)

    def with_errors(self, show: str | None = None) -> list[Episode]:
        """Episodes that have recorded errors, most recently updated first."""
        self._known_show(show)
        return self._models(self.index.with_errors(show))

    def stuck(self, older_than: timedelta, show: str | None = None) -> list[Episode]:
        """Episodes in a non-terminal stage for longer than ``older_than``, oldest first."""
        if not isinstance(older_than, timedelta) or older_than.total_seconds() < 0:
            raise ValidationError(f"older_than must be a non-negative timedelta, got {older_than!r}")
        self._known_show(show)
        return self._models(self.index.stuck(self.clock() - older_than, show))

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
        from .index.sync import rebuild

        return rebuild(self, progress)

    def sync(self, progress: Progress | None = None) -> SyncReport:
        """Pick up changes made outside statekit (new, edited, deleted files)."""
        from .index.sync import sync

        return sync(self, progress)

    def verify(self, progress: Progress | None = None) -> VerifyReport:
        """Compare the index with the files, the files with their event logs,
        and every asset with its hash; report every value of a unique key
        that more than one episode file holds (``kind="duplicate"``)."""
        from .index.sync import verify

        return verify(self, progress)

    def upgrade_index(self) -> str:
        """Bring the index to the current schema revision (Alembic); returns it."""
        from .index.sync import upgrade

        return upgrade(self)

    def _adopt_edit(self, show: str, ep: str, before: dict[str, Any] | None,
                    stage_before: str | None = None) -> tuple[Episode, list[str]]:
        """Adopt a person's valid edit of an episode file as a normal write:
        version + 1 over the log, one ``external_edit`` event naming the
        changed fields, comments kept. ``before``: the last indexed data.
        ``stage_before``: the stage the log last recorded; an edit that moved
        the stage records the move (``from_stage``/``to_stage``), so the
        next edit's move is checked from the stage the file now has."""
        changed: list[str] = []
        log_path = self._paths(show, ep).events
        logged = 0

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            after = m.model_dump(mode="json")
            ignore = {"version", "updated_at"}
            if before is None:
                changed.extend(k for k in after if k not in ignore)
            else:
                changed.extend(k for k in after if k not in ignore and not same(before.get(k), after[k]))
            new = m.model_copy(update={"version": logged + 1, "updated_at": now})
            moved = stage_before is not None and m.stage != stage_before
            return new, {"kind": "external_edit", "fields": list(changed),
                         "from_stage": stage_before if moved else None, "to_stage": m.stage if moved else None}

        check_id(show, "show id")
        check_id(ep, "episode id")
        with self._episode_lock(show, ep), self._episode_folder(show, ep) as folder:
            path, current = self._load(show, ep, folder)
            # the version the log is committed at. One event past the file's version that
            # the index never saw is the tail of a write that crashed before its rename (it
            # is dropped, as every write drops it); one the index saw was committed, and the
            # person lowered ``version`` by hand.
            logged = max(eventlog.last_logged_version(log_path, dir_fd=folder), 0)
            seen = before.get("version") if before is not None else None
            if logged == current.model.version + 1 and not (isinstance(seen, int) and seen >= logged):
                logged = current.model.version
            new, event = change(current.model, self.clock())
            indexed = before.get("metadata") if before is not None else None
            with self._unique_claims(show, ep, indexed if isinstance(indexed, Mapping) else None, new.metadata,
                                     edited=(path, current.raw)):
                return self._commit(path, current, new, event, committed=logged, folder=folder), changed

    # --- schema migration and import --------------------------------------------------------

    def migrate(self, *, dry_run: bool = False, progress: Progress | None = None) -> MigrationReport:
        """Rewrite episode files of an older schema at the current one.

        A dry run only lists them. Otherwise each file is first copied to
        ``.statekit/backups/migrate-<time>/`` and then rewritten through the
        normal write path (version + 1, one ``migrate`` event).
        ``progress(done, total)``: called as files are read, then as they are rewritten.
        """
        report = MigrationReport(dry_run=dry_run)
        stale = []
        found_eps = [(show, ep) for show in self.shows() for ep in self._episode_ids_on_disk(show)]
        for done, (show, ep) in enumerate(found_eps):
            if progress is not None:
                progress(done, len(found_eps))
            path, parsed = self._load(show, ep)
            found = schema_of(parsed.data, path, current=EPISODE_SCHEMA, legacy_ok=True)
            if found < EPISODE_SCHEMA:
                stale.append((show, ep, path, found))
                report.files.append({"path": os.path.relpath(path, self.root), "episode": f"{show}/{ep}",
                                     "from": found, "to": EPISODE_SCHEMA})
        if dry_run or not stale:
            return report
        backup = os.path.join(".statekit", "backups", f"migrate-{_stamp(self.clock())}")
        report.backup_dir = os.path.join(self.root, backup)
        for done, (show, ep, path, found) in enumerate(stale):
            if progress is not None:
                progress(done, len(stale))
            rel = os.path.relpath(os.path.dirname(path), self.root)
            parts = tuple(os.path.join(backup, rel).split(os.sep))
            self._make_dir(parts)

            def copy_first(new: Episode, path: str = path, parts: tuple[str, ...] = parts) -> None:
                raw = diskio.read_file(path)  # under the episode lock: the bytes about to be replaced
                if raw is not None:
                    with self._open(parts) as folder:
                        diskio.atomic_write(self._disk, "/".join((self.root, *parts, os.path.basename(path))), raw,
                                            dir_fd=folder)

            def change(m: Episode, now: datetime, found: int = found) -> tuple[Episode, dict[str, Any]]:
                new = m.model_copy(update={"version": m.version + 1, "updated_at": now})
                return new, {"kind": "migrate", "message": f"schema {found} -> {EPISODE_SCHEMA}"}

            self._write(show, ep, change, before_commit=copy_first)
        return report

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
        check_id(show, "show id")
        top = os.fspath(legacy_dir)
        if not os.path.isdir(top):
            raise ValidationError(f"{top} is not a directory", hint="give the folder holding the legacy YAML files")
        report = ImportReport()
        found = _legacy_files(top, report)
        taken: dict[str, str] = {}  # episode id -> the file that has it
        for done, path in enumerate(found):
            if progress is not None:
                progress(done, len(found))
            rel = _printable(os.path.relpath(path, top))
            try:
                ep, created = self._import_one(path, rel, show, taken)
            except EpisodeExistsError as exc:  # created meanwhile by someone else
                report.skipped.append({"file": rel, "episode": f"{show}/{exc.episode_id}", "reason": exc.message})
            except StatekitError as exc:
                report.rejected.append({"file": rel, "reason": exc.one_line()})
            else:
                taken[ep] = rel
                entry = {"file": rel, "episode": f"{show}/{ep}"}
                if created:
                    report.imported.append(entry)
                else:
                    report.skipped.append({**entry, "reason": "already in the store"})
        return report

    def _import_one(self, path: str, rel: str, show: str, taken: dict[str, str]) -> tuple[str, bool]:
        """Import one legacy file: its episode id, and False if that episode
        was already in the store (nothing written). Raises why the file is
        rejected; ``taken``: ids earlier files of this import gave."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise diskio.storage_error(exc, path, "read") from exc
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{rel} is a symbolic link", path=path,
                                  hint="statekit does not follow links: copy the file itself in")
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise CorruptFileError(f"{rel} is {kind}, not a YAML file", path=path,
                                   hint="only files are imported; rename it if it is not one")
        data = YAML_CODEC.load(diskio.read_file(path) or b"", path)
        if "schema_version" in data:
            raise ValidationError(f"{path}: has schema_version, so it is not a schema-0 file",
                                  hint="import reads the state-management document's files; "
                                       "copy a statekit episode folder in instead")
        source = data.get("episode_id") or Path(path).stem
        ep = legacy_id(str(source))
        if ep in taken:
            raise ValidationError(f"{path}: episode id {ep!r} is also used by {taken[ep]}",
                                  hint="give one of them another episode_id; nothing was imported from this file")
        if any(os.path.lexists(p) for p in self._episode_paths(show, ep)):
            return ep, False
        upgraded, _ = upgrade_episode(data, path=path, show_id=show, episode_id=ep, now=self.clock())
        upgraded["version"] = 1
        try:
            model = Episode.model_validate(upgraded)
        except PydanticValidationError as exc:
            raise _invalid(exc, None, path, "episode") from None
        if model.stage not in self.pipeline.stages:
            raise ValidationError(
                f"{path}: stage {model.stage!r} is not a stage of pipeline {self.pipeline.name!r}",
                field="stage", hint="stages: " + ", ".join(self.pipeline.stages))
        self._create(model, {"kind": "import", "to_stage": model.stage, "message": f"imported from {rel}"})
        return ep, True

    # Last in the class: a method named ``list`` hides the builtin for the
    # annotations of every method written after it.
    def list(self, show: str | None = None, stage: str | None = None) -> list[Episode]:
        """Episodes in show order, optionally of one show and/or one stage (from the index)."""
        if stage is not None:
            self._check_stage(stage)
        self._known_show(show)
        return self._models(self.index.episode_data(show, stage))


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


def read_checkpoint(path: str) -> dict[str, Any] | None:
    """A checkpoint file's data, checked against its own sha256; None if
    there is no such file; ``CorruptFileError`` if it is damaged."""
    raw = diskio.read_file(path)
    if raw is None:
        return None
    body = JSON_CODEC.load(raw, path)
    schema_of(body, path, current=CHECKPOINT_SCHEMA, legacy_ok=False)
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(body.get("sha256"), str):
        raise CorruptFileError(f"{path}: not a statekit checkpoint (no data or sha256)", path=path)
    try:
        digest = _sha256(_canonical(data))
    except (TypeError, ValueError):
        digest = ""
    if digest != body["sha256"]:
        raise CorruptFileError(f"{path}: checkpoint data does not match its sha256 (the file is damaged)",
                               path=path, stage=body.get("stage") if isinstance(body.get("stage"), str) else None)
    return data


_BACKUP_NAME = re.compile(r"episode\.v(\d{1,18})\.(yaml|json)")


def _backup_versions(names: list[str]) -> list[tuple[int, str]]:
    return [(int(m.group(1)), name) for name in names if (m := _BACKUP_NAME.fullmatch(name))]


def _checkpoint_stages(episode_dir: str) -> list[str]:
    try:
        names = os.listdir(os.path.join(episode_dir, "checkpoints"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [n[:-5] for n in names if n.endswith(".json") and not n.startswith(diskio.TEMP_PREFIX)]


def _printable(text: str) -> str:
    """A file name as text that can be stored and printed (bytes that are not
    UTF-8 shown as ``\\udcxx`` escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _legacy_files(top: str, report: ImportReport) -> list[str]:
    """Every entry named ``*.yaml`` or ``*.yml`` under ``top``, sorted, without
    following symlinks; a folder that cannot be listed is reported as rejected."""
    found: list[str] = []

    def unlisted(exc: OSError) -> None:
        where = _printable(os.path.relpath(exc.filename or top, top))
        report.rejected.append({"file": where + os.sep, "reason": f"could not list the folder: {exc.strerror or exc}"})

    for folder, dirs, names in os.walk(top, onerror=unlisted):
        dirs.sort()
        found += [os.path.join(folder, n) for n in (*dirs, *names) if n.endswith((".yaml", ".yml"))]
    return sorted(found)


def _subdirs(path: str | int) -> list[str]:
    """The real folders (no symlinks) in ``path``, or in the folder held open as ``path``."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _with_fields(m: Episode, given: Mapping[str, Any]) -> tuple[Episode, list[str]]:
    """``m`` with the ``given`` fields replaced whole, validated as a file is
    (``ValidationError`` naming the field), and the names of those that changed."""
    before = m.model_dump(mode="json")
    data = {**before, **{k: dict(v) if isinstance(v, Mapping) else v for k, v in given.items()}}
    try:
        new = Episode.model_validate(data)
    except PydanticValidationError as exc:
        raise _invalid(exc, None, None, "episode") from None
    after = new.model_dump(mode="json")
    return new, [k for k in given if not same(before[k], after[k])]


def _check_cost(cost: object) -> float | None:
    """A cost argument as a float (None stays None); ``ValidationError`` for
    anything but a finite number >= 0. What it adds up to is checked by
    ``add_cost`` under the episode's lock."""
    if cost is None:
        return None
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise ValidationError(f"cost must be a number, got {cost!r}", field="cost", hint=COST_HINT)
    try:
        value = float(cost)
    except OverflowError:  # an int beyond any float
        value = float("inf")
    if not (value >= 0 and value != float("inf")):
        raise ValidationError(f"cost must be a finite number >= 0, got {cost!r}", field="cost", hint=COST_HINT)
    return value
