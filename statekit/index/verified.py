"""What ``verify`` found clean, remembered (``.statekit/verified.db``), so an unchanged
episode is not parsed and replayed again by the next ``verify``.

After a clean check of an episode, ``verify`` keeps a digest of everything that
check read for it and the check's result (stage and costs for the totals, the
unique values it holds, its assets, its checkpoint and backup counts, the unique
values of its index row). The digest is of content, never of stat times: the
episode file's bytes, the log's (plain or compressed), each checkpoint's and each
backup's name and bytes, the file's and the log's kind and number of names (with,
for a file of several names, whether the other is statekit's own backup), the
index's row as stored, its pending mark and its events (``digest``). A store-wide
``fingerprint`` (statekit's own code, the index's rows revision, ``statekit.yaml``,
the recorded pipeline graphs, the unique keys, the ledger) drops every memo when it
changes. Store-wide checks (duplicates, totals, the unique values table, rows
without files) and the assets' objects are checked by every ``verify``.

The file is a cache: missing or damaged, ``verify`` starts empty (logged, never an
error) and checks everything. It is written once, at the end of a ``verify``, in one
transaction, and only if something changed; a store opened read-only never writes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from .. import files as diskio
from .. import packed
from ..graphs import graph_hash
from ..models import AssetRecord
from .tables import ROWS_REVISION

if TYPE_CHECKING:
    from ..writes import Writer

log = logging.getLogger("statekit")

MEMO_REVISION = "2"
"""The form of what is remembered; a change drops every memo."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS clean (episode TEXT PRIMARY KEY, digest BLOB NOT NULL, result BLOB NOT NULL);
"""

Remembered = dict[str, tuple[bytes, bytes]]
"""Episode key ("show/ep") -> (digest of its inputs: ``file_digest`` + ``index_digest``, its encoded clean result)."""

_source: bytes | None = None


def memo_path(root: str) -> str:
    return os.path.join(root, ".statekit", "verified.db")


def _code() -> bytes:
    """The hash of statekit's own source: a verify of other code checks everything again."""
    global _source
    if _source is None:
        h = hashlib.blake2b(digest_size=32)
        package = Path(__file__).resolve().parent.parent
        for path in sorted(package.rglob("*.py")):
            h.update(str(path.relative_to(package)).encode() + b"\0")
            h.update(path.read_bytes())
        _source = h.digest()
    return _source


def fingerprint(writer: Writer) -> bytes:
    """What every episode's check depends on besides its own inputs."""
    h = hashlib.blake2b(digest_size=32)
    for part in (MEMO_REVISION.encode(), _code(), ROWS_REVISION.encode(), graph_hash(writer.pipeline).encode(),
                 repr(list(writer.config.unique)).encode(), repr(writer.chained).encode(),
                 repr(writer.config.schema_version).encode(),
                 repr(writer.config.format).encode()):
        _put(h, part)
    _put(h, _file_bytes(os.path.join(writer.root, "statekit.yaml")))
    _folder(h, os.path.join(writer.root, ".statekit", "pipelines"))  # the graphs the store ran under
    return h.digest()


# --- an episode's digest ------------------------------------------------------------


def _put(h: Any, part: bytes | None) -> None:
    if part is None:
        h.update(b"\xff" * 8)
    else:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)


def _file_bytes(path: str) -> bytes | None:
    try:
        return diskio.read_file(path, None)
    except Exception:  # noqa: BLE001 - anything odd: a marker of its own, the check reports it
        return b"\xfeunreadable"


_exists = os.access


def _folder(h: Any, directory: str) -> None:
    """Every entry of a folder: name, kind, and a regular file's bytes (None: no folder)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        _put(h, None)
        return
    _put(h, str(stat.S_IFMT(st.st_mode)).encode())
    if not stat.S_ISDIR(st.st_mode):
        return
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        est = os.lstat(path)
        _put(h, name.encode(errors="surrogateescape"))
        _put(h, f"{stat.S_IFMT(est.st_mode)} {est.st_nlink}".encode())
        if stat.S_ISREG(est.st_mode):
            _put(h, _file_bytes(path))


def kept_files(root: str, show: str, ep: str, directory: str, backed_up: bool = True) -> bytes:
    """The digest of an episode's checkpoints and backups (names, kinds, bytes).
    ``backed_up=False``: its show's backup folder had no entry for it (``backed_up``).
    ``directory``: the episode's folder, in which the caller has just read the episode file: a
    missing checkpoints folder is told by ``os.access`` (no ``FileNotFoundError`` made, as
    ``_folder``'s ``lstat`` makes one), since a lookup there can then fail only for a missing name."""
    checkpoints = directory + "/checkpoints"
    there = _exists(checkpoints, os.F_OK, follow_symlinks=False)
    if not there and not backed_up:
        return NOTHING_KEPT  # (what is digested below then: the usual episode, its digest made once)
    h = hashlib.blake2b(digest_size=32)
    if there:
        _folder(h, checkpoints)
    else:
        _put(h, None)  # (what _folder puts for a missing folder)
    if backed_up:
        _folder(h, f"{root}/.statekit/backups/episodes/{show}/{ep}")
    else:
        _put(h, None)  # what _folder puts for a missing folder
    return h.digest()


def nothing_kept() -> bytes:
    """``kept_files`` of an episode with neither a checkpoints folder nor a backup folder."""
    h = hashlib.blake2b(digest_size=32)
    _put(h, None)
    _put(h, None)
    return h.digest()


NOTHING_KEPT = nothing_kept()


def backed_up(root: str) -> set[tuple[str, str]] | None:
    """(show, episode) of every entry in the backup folders, listed once for all episodes
    (None if they cannot be listed: then each episode's is looked at)."""
    top = f"{root}/.statekit/backups/episodes"
    found: set[tuple[str, str]] = set()
    try:
        if os.path.islink(top):
            return None
        shows = os.listdir(top)
    except FileNotFoundError:
        return found
    except OSError:
        return None
    for show in shows:
        try:
            found.update((show, ep) for ep in os.listdir(f"{top}/{show}"))
        except (NotADirectoryError, FileNotFoundError):
            continue
        except OSError:
            return None
    return found


def plain_shows(root: str, shows: set[str]) -> set[str]:
    """The shows whose folders on the way to an episode's backups and to its folder are real
    folders (or, for the backups, missing): for an episode of one without a checkpoints or
    backup folder, ``index/verify:_verify_kept_files`` finds nothing (``writes:Writer.backups_of``'s walk
    meets no symlink, and its ``require_folders`` passes: the walk found the episode folder)."""
    def real(path: str) -> bool | None:  # True: a folder; None: missing; False: anything else
        try:
            return stat.S_ISDIR(os.lstat(path).st_mode) or False
        except FileNotFoundError:
            return None
        except OSError:
            return False

    def backups_plain(parts: list[str]) -> bool:
        path = root
        for part in parts:
            path += "/" + part
            kind = real(path)
            if kind is None:
                return True
            if not kind:
                return False
        return True

    if not real(root + "/shows") or not backups_plain([".statekit", "backups", "episodes"]):
        return set()
    return {show for show in shows if real(f"{root}/shows/{show}") and real(f"{root}/shows/{show}/episodes")
            and backups_plain([".statekit", "backups", "episodes", show])}


def read_log(path: str) -> tuple[bytes | None, os.stat_result | None]:
    """``packed.read_either(path)`` (an episode's log), and the stat of the plain file if it was read:
    its ``fstat`` (opened without following a symlink: the ``lstat`` verify takes of the log, without
    a call of its own); None when it was not (missing: the compressed log, or none, read the plain way,
    and the caller looks with ``lstat``). A log that is no regular file, or cannot be read: an ``OSError``
    or ``ValueError`` (``read_either`` raises a ``StatekitError``: to ``verify``, both "cannot be read")."""
    try:
        fd = os.open(path, os.O_RDONLY | diskio.O_NOFOLLOW | diskio.O_CLOEXEC | diskio.O_NONBLOCK)
    except FileNotFoundError:
        return packed.read_either(path), None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        chunks = []
        while True:  # (``files.read_file``'s reading)
            want = max(st.st_size + 1, 65536)
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < want:
                break
        return b"".join(chunks) if len(chunks) != 1 else chunks[0], st
    finally:
        os.close(fd)


def file_digest(*, raw: bytes, log_raw: bytes | None, links: tuple[Any, ...], kept: bytes,
                raw_sha: bytes | None = None) -> bytes:
    """The digest of the files an episode's check reads (32 bytes): sha256, which the processor
    computes in hardware where it can (twice blake2b's speed here). ``raw_sha``: the file's
    sha256 (its 32 bytes), if made (the check compares it with the log's)."""
    h = hashlib.sha256(raw_sha if raw_sha is not None else hashlib.sha256(raw).digest())  # (32 bytes: ends itself)
    _put(h, log_raw)
    _put(h, repr(links).encode())
    _put(h, kept)
    return h.digest()


def index_digest(*, row: Any, mark: Any, event_keys: Any) -> bytes:
    """The digest of what an episode's check reads from the index (32 bytes): its row
    (version, file_sha256, data as stored), its pending mark, its events."""
    if row is None:
        return hashlib.sha256(_text([None, mark, event_keys]) + b"\0no row").digest()
    h = hashlib.sha256(_text([row[0], row[1], mark, event_keys]))  # (a JSON array: it ends itself)
    h.update(row[2].encode() if isinstance(row[2], str) else _text(row[2]))
    return h.digest()


def _text(value: Any) -> bytes:
    """Plain data (tuples, lists, dicts, text, numbers, None) as bytes that tell values apart."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:  # an integer beyond 64 bits, a time object: its repr (tells types apart too)
        return b"repr:" + repr(value).encode()


# --- a clean result, encoded -------------------------------------------------------------


def encode(state: tuple[str, Mapping[str, float]], held: list[tuple[str, str, Any]],
           assets: tuple[str, Mapping[str, AssetRecord]] | None, counts: tuple[int, int],
           row_claims: list[tuple[str, str, str, str]]) -> bytes | None:
    """A clean check's result as bytes; None if it cannot be kept exactly (then it is not remembered)."""
    try:
        return orjson.dumps({
            "state": [state[0], dict(state[1])], "held": held, "counts": counts, "row_claims": row_claims,
            "assets": None if assets is None else [assets[0], {n: r.model_dump(mode="json")
                                                               for n, r in assets[1].items()}],
        })
    except TypeError:  # e.g. an integer beyond 64 bits in a unique value
        return None


def decode(blob: bytes) -> tuple[Any, ...]:
    """(state, held, assets, counts, row_claims) as ``encode`` had them."""
    d = orjson.loads(blob)
    assets = d["assets"]
    return ((d["state"][0], d["state"][1]), [tuple(x) for x in d["held"]],
            None if assets is None else (assets[0], {n: AssetRecord.model_validate(r) for n, r in assets[1].items()}),
            tuple(d["counts"]), [tuple(x) for x in d["row_claims"]])


# --- the file --------------------------------------------------------------------------


def _linked(root: str) -> str | None:
    """A symlink in place of ``.statekit`` or of the memo's files (SQLite would follow it: the
    memo is then neither read nor written, as the index refuses to be opened)."""
    path = memo_path(root)
    for name in (os.path.dirname(path), path, path + "-journal", path + "-wal", path + "-shm"):
        if os.path.islink(name):
            return name
    return None


def load(root: str, print_: bytes) -> Remembered:
    """What the last verifies found clean, if made under the same fingerprint; {} if none,
    or if the file is damaged (logged)."""
    path = memo_path(root)
    if not os.path.isfile(path) or _linked(root) is not None:
        return {}
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=30.0)  # (a root may hold ? or #)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None or row[0] != print_:
                return {}
            return {key: (bytes(d), bytes(r)) for key, d, r in conn.execute("SELECT episode, digest, result FROM clean")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("%s: cannot read what verify remembered (%s): checking every episode", path, exc)
        return {}


def save(root: str, print_: bytes, before: Remembered, clean: Mapping[str, tuple[bytes, bytes]]) -> None:
    """Remember ``clean`` (this verify's clean episodes) in one transaction, and only them:
    an episode remembered ``before`` that is not clean now (or whose file is gone) is forgotten.
    Nothing is written when nothing changed. A failure is logged, never raised."""
    path = memo_path(root)
    fresh = not before
    changed = [(k, d, r) for k, (d, r) in clean.items() if before.get(k) != (d, r)]
    gone = [k for k in before if k not in clean]
    if not changed and not gone and not fresh:
        return
    if not changed and not gone and fresh and not clean:
        return  # nothing to remember, nothing remembered
    try:
        linked = _linked(root)
        if linked is not None:
            log.warning("%s: is a symlink; not writing what verify found clean", linked)
            return
        for attempt in range(2):
            try:
                conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
                try:
                    if _begin(conn, fresh, print_):
                        rows: Iterable[tuple[str, bytes, bytes]] = ((k, d, r) for k, (d, r) in clean.items())
                    else:
                        conn.executemany("DELETE FROM clean WHERE episode = ?", [(k,) for k in gone])
                        rows = changed
                    conn.executemany(_INSERT, rows)
                    conn.execute("COMMIT")
                    return
                finally:
                    conn.close()
            except sqlite3.DatabaseError as exc:
                if attempt or isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise
                log.warning("%s: damaged (%s): starting it again", path, exc)
                os.unlink(path)  # a cache: what it held is checked again
    except (sqlite3.Error, OSError) as exc:
        log.warning("%s: cannot remember what verify found clean (%s)", path, exc)


def _begin(conn: sqlite3.Connection, fresh: bool, print_: bytes) -> bool:
    """The memo's schema, then its write transaction; whether every result is to be written (a
    fresh memo, or one made under another fingerprint: what it held is dropped, ``print_`` set)."""
    conn.executescript(SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
    everything = fresh or row is None or row[0] != print_
    if everything:
        conn.execute("DELETE FROM clean")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fingerprint', ?)", (print_,))
    return everything


_INSERT = "INSERT OR REPLACE INTO clean (episode, digest, result) VALUES (?, ?, ?)"


# --- written while verify goes on ---------------------------------------------------------


_DONE = object()
_ABANDONED = object()


class Streamed:
    """``save(root, print_, before, clean)``, written while verify goes on: on a thread of its
    own (``statekit-verify-memo``), each clean result as the merge finds it (``add``), in one
    transaction committed once ``clean`` is complete (``finish``), so what is left after the last
    result is the commit (at 50k episodes, half a second of inserts was after it, serial).

    Written exactly as ``save`` writes it: nothing until a result differs from ``before`` (or the
    memo is fresh); then, in the transaction, every result (a fresh memo, or another fingerprint) or
    only those that differ, and the forgotten ones deleted at the end. If anything goes wrong on
    the way (a damaged or locked file, a symlink, any database error), nothing is committed and
    ``save`` does it all at the end, its own way, with its own errors and logging; so does it when
    nothing was written on the way (then it writes only what was forgotten, or nothing). ``abandon``:
    verify failed; nothing is committed (a fresh memo's file may be left made, empty: read as none). ``join`` raises what the thread raised (not a database error:
    those are logged, as ``save`` logs them)."""

    def __init__(self, root: str, print_: bytes, before: Remembered, clean: Mapping[str, tuple[bytes, bytes]]) -> None:
        self.root, self.print_, self.before, self.clean = root, print_, before, clean
        self.failed: list[BaseException] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._batch: list[tuple[str, tuple[bytes, bytes]]] = []
        self._thread = threading.Thread(target=self._run, name="statekit-verify-memo", daemon=True)
        self._thread.start()

    def add(self, item: tuple[str, tuple[bytes, bytes]]) -> None:
        """(key, (digest, result)) of a clean result, once it is in ``clean``; handed over 512 at a time
        (one at a time, the thread woke for each: one ``executemany`` per result, 10% more CPU)."""
        self._batch.append(item)
        if len(self._batch) >= 512:
            self._queue.put(self._batch)
            self._batch = []

    def finish(self) -> None:
        """``clean`` is complete: commit (or ``save``)."""
        self._queue.put(self._batch)
        self._queue.put(_DONE)

    def abandon(self) -> None:
        self._queue.put(_ABANDONED)

    def join(self) -> None:
        self._thread.join()
        if self.failed:
            raise self.failed[0]

    def _batches(self) -> Any:
        """Lists of what ``add`` was given, as they come; then the last item (``_DONE`` or ``_ABANDONED``)."""
        while True:
            batch = self._queue.get()
            yield batch
            if batch is _DONE or batch is _ABANDONED:
                return

    def _run(self) -> None:
        try:
            ended, streamed = _stream(self.root, self.print_, self.before, self.clean, self._batches())
            if ended is _DONE and not streamed:
                save(self.root, self.print_, self.before, self.clean)
        except BaseException as exc:  # noqa: BLE001 - raised by ``join``
            self.failed.append(exc)


def _stream(root: str, print_: bytes, before: Remembered, clean: Mapping[str, tuple[bytes, bytes]],
            batches: Any) -> tuple[Any, bool]:
    """(how the batches ended, whether all of ``save``'s writing was done and committed)."""
    fresh = not before
    conn = None
    everything = False
    arrived: list[tuple[str, bytes, bytes]] = []
    ended: Any = None
    try:
        for batch in batches:
            if batch is _DONE or batch is _ABANDONED:
                ended = batch
                break
            rows = [(k, d, r) for k, (d, r) in batch]
            if conn is None:
                arrived.extend(rows)
                rows = [row for row in rows if before.get(row[0]) != (row[1], row[2])]
                if not rows:
                    continue
                if _linked(root) is not None:
                    return _drain(batches), False
                conn = sqlite3.connect(memo_path(root), timeout=30.0, isolation_level=None)
                everything = _begin(conn, fresh, print_)
                if everything:
                    rows = arrived
            elif not everything:
                rows = [row for row in rows if before.get(row[0]) != (row[1], row[2])]
            conn.executemany(_INSERT, rows)
        if conn is None or ended is not _DONE:
            return ended, False
        if not everything:
            conn.executemany("DELETE FROM clean WHERE episode = ?", [(k,) for k in before if k not in clean])
        conn.execute("COMMIT")
        return ended, True
    except (sqlite3.Error, OSError):
        return (ended if ended is not None else _drain(batches)), False
    finally:
        if conn is not None:
            conn.close()  # (a transaction not committed is rolled back)


def _drain(batches: Any) -> Any:
    """The rest of the batches, up to how they end (which is returned)."""
    for batch in batches:
        if batch is _DONE or batch is _ABANDONED:
            return batch
    return None
