"""``verify``: the index against the files, the files against their event logs,
checkpoints, backups and assets, and duplicates of unique metadata values.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import logging
import os
import stat
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, cast, select

from .. import eventlog
from .. import files as diskio
from .. import objects as assets
from ..errors import StatekitError
from ..graphs import illegal_move, stranding
from ..layout import checkpoint_stages
from ..models import AssetRecord, Episode
from ..parsing import read_checkpoint
from ..unique import claims as claims_of
from ..unique import shown
from . import verified
from .compare import (
    Dumped,
    data_same,
    event_keys,
    events_by_episode,
    raw_rows,
    row_same,
    text_of,
)
from .pool import ordered_map, workers_for
from .rows import claim_rows, json_doc
from .scan import Problem, Progress, VerifyReport, episode_file, episode_folders, index_path, problem, sha256_of
from .tables import episodes, run_totals_drift, stage_totals, unique_values
from .verified import plain_shows as _plain_shows

if TYPE_CHECKING:
    from ..writes import Writer

log = logging.getLogger("statekit")


# --- verify ------------------------------------------------------------------------


def verify(writer: Writer, progress: Progress | None = None, *, workers: int | None = None,
           full: bool = False) -> VerifyReport:
    """Every problem between files, their event logs and the index, every
    asset whose content no longer matches its hash, and every value of a
    unique key that more than one episode file holds. ``workers``: processes
    reading the files (None: the cores, for a large store); the report is the
    same, problem for problem. An episode whose inputs are those of its last
    clean check (``index/verified``) is not checked again, unless ``full``.

    Python's cyclic garbage collector is off meanwhile (as it was, after): what a
    verify makes holds no cycles (rows, results, problems: reference counting frees
    them), and each full collection walked every row read from the index and every
    result kept, a quarter of the parent's time at 10k episodes (0.83 -> 0.61 s CPU).
    Only on the main thread: a server's other threads (and other verifies) keep the
    collector as they expect it."""
    if threading.current_thread() is not threading.main_thread():
        return _verify(writer, progress, workers=workers, full=full)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _verify(writer, progress, workers=workers, full=full)
    finally:
        if enabled:
            gc.enable()


def _verify(writer: Writer, progress: Progress | None, *, workers: int | None, full: bool) -> VerifyReport:
    """``verify``, with the collector as it is."""
    report = VerifyReport()
    _STRANDINGS.clear()  # (the graphs' answers of this verify only)
    hashed: dict[str, str | None] = {}  # object sha256 -> its problem, if any
    # the episode folders, listed here; each folder's file is looked for (and lstat'ed) by the worker that
    # checks it (``located``), as a rebuild's workers do: the parent's walk was serial time before the pool
    folders = list(episode_folders(writer.root))
    print_ = verified.fingerprint(writer)
    # (a full verify needs what is remembered only to save what changed: read while the workers check)
    before = None if full else verified.load(writer.root, print_)
    remembered = before or {}
    backup_dirs = verified.backed_up(writer.root)  # (a clean check looks again, not trusting this listing)
    total = len(folders)
    found: list[Any] = [None] * total  # (show, episode, path, stat) of each folder's file, as the workers find it
    plain = _plain_shows(writer.root, {item[0] for item in folders}) if backup_dirs is not None else set()

    def located(i: int) -> tuple[str, str, str, os.stat_result] | None:
        """``walk``'s item for folder ``i``: None if it holds no episode file (then it is no episode)."""
        show, ep, base = folders[i]
        got = episode_file(base)
        return None if got is None else (show, ep, got[0], got[1])

    def files_of(item: tuple[str, str, str, os.stat_result]
                 ) -> tuple[bytes, bytes, bytes | None, Any, bytes, bytes] | None:
        """(the digest of the files one episode's check reads, the file's bytes, the log's,
        the links, the kept files' digest, the file's sha256); None if something cannot be read
        (the check finds it and words it)."""
        show, ep, path, st = item
        directory = os.path.dirname(path)
        log_path = directory + "/events.jsonl"
        try:
            raw = diskio.read_file(path)
            if raw is None:
                return None
            log_raw, log_st = verified.read_log(log_path)  # (the log's fstat, if read, for its lstat)
            links = (_link(path, st), _link(log_path, log_st))  # (the lstat that found the file)
            kept = verified.kept_files(writer.root, show, ep, directory,
                                       backup_dirs is None or (show, ep) in backup_dirs)
        except (StatekitError, OSError, ValueError):
            return None
        raw_sha = hashlib.sha256(raw).digest()
        return (verified.file_digest(raw=raw, log_raw=log_raw, links=links, kept=kept, raw_sha=raw_sha), raw, log_raw,
                links, kept, raw_sha)

    def look(i: int) -> Any:
        """First pass, while the index is read: (the file's path, the remembered result) of an episode
        whose files are those of its last clean check (its index rows are compared after)."""
        memo = remembered.get(f"{folders[i][0]}/{folders[i][1]}")
        if memo is None:
            return None
        item = located(i)
        files = files_of(item) if item is not None else None
        if files is None or files[0] != memo[0][:32]:
            return None
        return item[2], verified.decode(memo[1])  # (the path alone: a stat pickles slowly)

    # (indices into ``folders``, which the workers inherit: not pickled; nothing remembered: no look)
    looked = ordered_map(look, range(total), workers_for(total, workers), eager=True) if remembered and total \
        else iter(())
    first_look = next(looked, None)  # (the workers read the files while the index is read below)
    with writer.index.reading() as conn:
        # the row's data as stored: parsed only for an episode checked in full
        indexed = {(s, e): (version, sha, data) for s, e, version, sha, data in raw_rows(conn, select(
            episodes.c.show_id, episodes.c.episode_id, episodes.c.version, episodes.c.file_sha256,
            episodes.c.data if conn.dialect.name == "sqlite" else cast(episodes.c.data, Text)))}
        marked = {key: mark for key, (_path, mark) in writer.index.pending().items()} if writer.chained else {}
        totals = {(s, st): (n, c) for s, st, n, c in conn.execute(select(stage_totals))}
        runs_differ = run_totals_drift(conn)
        indexed_claims = {tuple(r) for r in conn.execute(select(
            unique_values.c.key, unique_values.c.value_sha256, unique_values.c.show_id, unique_values.c.episode_id))}
    expected: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    keys = writer.config.unique
    holders: dict[tuple[str, str], list[tuple[str, str, Any]]] = defaultdict(list)  # (key, sha) -> (ep, path, value)
    seen = set()
    # the index's events are read once the pool is at work (the workers compare no events: the
    # parent compares what they derive, ``with_events``), unless the memo's look needs them first
    indexed_events: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    events_read = []

    def read_events() -> None:
        if not events_read:
            with writer.index.reading() as conn:
                indexed_events.update(events_by_episode(conn))
            events_read.append(True)

    def index_of(show: str, ep: str) -> bytes:
        read_events()
        return verified.index_digest(row=indexed.get((show, ep)), mark=marked.get((show, ep)),
                                     event_keys=indexed_events.get((show, ep)))

    def check(i: int) -> Any:
        """(the episode file's path, folder ``i``'s episode checked in full (``_check``) and (its digest,
        the result encoded) when it may be remembered); None if the folder holds no episode file.
        Runs in a pool's worker: the assets are hashed by the
        caller, each stored object once. The index's events are compared by the parent
        (``with_events``: the last of the episode's problems, if they differ), which also
        completes the memo's digest with the index's part."""
        item = located(i)
        if item is None:
            return None
        show, ep, path, _st = item
        row = indexed.get((show, ep))
        files = files_of(item)
        if files is None:
            return path, (*_check(writer, show, ep, path, row, marked, keys), None)
        digest, raw, log_raw, links, kept, raw_sha = files
        # neither checkpoints nor backups, as the one listing of the backup folders saw it: nothing to check there
        none_kept = kept == verified.NOTHING_KEPT and show in plain and (show, ep) not in backup_dirs  # type: ignore[operator]
        result = _check(writer, show, ep, path, row, marked, keys, raw, log_raw, links, none_kept, raw_sha.hex())
        first, then, state, held, assets, counts, row_claims, _derived = result
        encoded = None
        # remembered only if the kept files the check saw are those digested: none (it counted none), or the
        # same when looked at again
        if not first and not then and state is not None and (
                kept == verified.NOTHING_KEPT and counts == (0, 0)
                or _kept(writer, show, ep, os.path.dirname(path)) == kept):
            encoded = verified.encode(state, held, assets, counts, row_claims)
        return path, (*result, (digest, encoded) if encoded is not None else None)

    def with_events(item: tuple[str, str, str, os.stat_result], result: tuple[Any, ...]) -> tuple[Any, ...]:
        """A worker's result with the index's events compared (the last check of ``_check``)
        and the memo's digest completed: as the merge below takes it."""
        first, then, state, held, assets, counts, row_claims, derived, memo = result
        show, ep, path, _st = item
        key = (show, ep)
        mine = indexed_events.pop(key, None)  # (its last use: freed while the workers go on, not all at the end)
        if derived is not None and (mine if mine is not None else []) != derived:
            then.append(Problem(
                "index", os.path.join(os.path.dirname(path), "events.jsonl"),
                f"{show}/{ep}: the index's events differ from events.jsonl (run 'statekit sync')", f"{show}/{ep}"))
            memo = None
        if memo is not None:  # (``index_of``, the events read already)
            memo = (memo[0] + verified.index_digest(row=indexed.get(key), mark=marked.get(key), event_keys=mine),
                    memo[1])
        return first, then, state, held, assets, counts, row_claims, memo, False

    clean: dict[str, tuple[bytes, bytes]] = {}
    streamed: verified.Streamed | None = None  # (what is clean, written while the merge goes on)
    row_claims_of: dict[tuple[str, str], list[tuple[Any, ...]]] = {}

    def merge(i: int) -> None:
        """Episode ``i``'s result into the report, in the order of ``folders`` (``outcome[i]`` then freed)."""
        result = outcome[i]
        outcome[i] = None
        if result is _NO_FILE:
            return
        show, ep, path, _st = found[i]
        key = f"{show}/{ep}"
        seen.add((show, ep))
        report.checked += 1
        first, then, state, held, assets, (checkpoints, backups), row_claims, memo, unchanged = result
        if unchanged:
            report.unchanged += 1
        else:
            report.full += 1
        if row_claims is not None:
            row_claims_of[(show, ep)] = row_claims
        report.checkpoints += checkpoints
        report.backups += backups
        report.problems.extend(first)
        if state is not None:  # (``totals_delta(expected, show, None, state)``, without its loop over two states)
            stage, costs = state
            expected[(show, stage)][0] += 1
            for cost_stage, amount in costs.items():
                expected[(show, cost_stage)][1] += amount
        for claim_key, sha, value in held:
            holders[(claim_key, sha)].append((key, path, value))
        n_problems = len(report.problems)
        if assets is not None:
            _verify_assets(writer, report, assets[0], assets[1], os.path.dirname(path), hashed)
        report.problems.extend(then)
        if memo is not None and len(report.problems) == n_problems:  # clean, its assets too
            clean[key] = memo
            if streamed is not None:
                streamed.add((key, memo))

    # the remembered results whose index rows are unchanged too; the rest are checked in full
    outcome: list[Any] = [None] * total
    done = 0
    for i, hit in enumerate(itertools.chain([first_look] if remembered and total else [], looked)):
        if hit is not None:
            path, hit = hit
            show, ep = folders[i][0], folders[i][1]
            memo = remembered[f"{show}/{ep}"]
            if memo[0][32:] == index_of(show, ep):
                indexed_events.pop((show, ep), None)
                found[i] = (show, ep, path, None)
                outcome[i] = ([], [], *hit, memo, True)
                if progress is not None:
                    progress(done, total)
                done += 1
    missed = [i for i in range(total) if outcome[i] is None]
    # each result is merged as soon as those before it in ``found`` are (while the workers go on)
    merged = 0
    # the workers are handed indices into ``folders`` (which they inherit): pickling each item costs more;
    # every item is handed out at once, so the workers go on while the index's events are read here
    checked = ordered_map(check, missed, workers_for(len(missed), workers), eager=True)
    first_checked = next(checked, None)
    read_events()
    if full:
        before = verified.load(writer.root, print_)
    # what is found clean is remembered on a helper thread as the merge finds it (``verified.Streamed``:
    # its inserts overlap the workers, its commit the store-wide checks below and the freeing of what was
    # read); joined before returning, its failure raised as before. A store opened read-only writes nothing.
    if not isinstance(writer.disk, diskio.ReadOnlyDisk):
        streamed = verified.Streamed(writer.root, print_, before or {}, clean)
    try:
        for i, got in zip(missed, itertools.chain([first_checked] if missed else [], checked)):
            if got is None:
                outcome[i] = _NO_FILE
            else:
                found[i] = (*folders[i][:2], got[0], None)
                outcome[i] = with_events(found[i], got[1])
            if progress is not None:
                progress(done, total)
            done += 1
            while merged <= i and outcome[merged] is not None:
                merge(merged)
                merged += 1
        while merged < total:  # (the remembered results after the last one checked)
            merge(merged)
            merged += 1
    except BaseException:
        if streamed is not None:
            streamed.abandon()  # (nothing written)
        raise
    if streamed is not None:
        streamed.finish()
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
    expected_claims = set()
    for (s, e), (_v, _sha, data) in indexed.items():
        claimed = row_claims_of.get((s, e))
        if claimed is None:
            claimed = [(r["key"], r["value_sha256"], s, e) for r in claim_rows(keys, s, e, json_doc(data))]
        expected_claims.update(claimed)
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
    if runs_differ:
        report.problems.append(Problem(
            "index", index_path(writer.root), f"the index's run totals differ from its events in {runs_differ} "
            "row(s) (run 'statekit rebuild-index')"))
    for read in (indexed, folders, found, seen, row_claims_of, holders, expected_claims):
        read.clear()  # (freed while the memo is saved, not after)
    if streamed is not None:
        streamed.join()
    return report


_NO_FILE = ("no episode file",)
"""A folder's outcome when it holds no episode file (``walk`` would not have named it)."""


def _kept(writer: Writer, show: str, ep: str, directory: str) -> bytes | None:
    try:
        return verified.kept_files(writer.root, show, ep, directory)
    except (OSError, ValueError):
        return None


def _links(*paths: str) -> tuple[Any, ...]:
    """(kind, number of names, whether the other name is statekit's own backup) of each
    path, None for a missing one: what ``_verify_links`` judges."""
    return tuple(_link(path) for path in paths)


def _link(path: str, st: os.stat_result | None = None) -> tuple[int, int, bool] | None:
    """``_links`` of one path (``st``: its ``lstat``, already taken)."""
    if st is None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
    return stat.S_IFMT(st.st_mode), st.st_nlink, st.st_nlink > 1 and _own_backup_link(path, st)


def _check(writer: Writer, show: str, ep: str, path: str, kept_row: tuple[int, str, Any] | None,
           marked: dict[tuple[str, str], Any], keys: list[str], raw: bytes | None = None, log_raw: bytes | None = None,
           links: tuple[Any, ...] | None = None, none_kept: bool = False, sha: str | None = None) -> tuple[Any, ...]:
    """One episode checked in full: (problems found before its assets are hashed, after),
    its (stage, costs), its unique values, its assets, the checkpoints and backups checked,
    its index row's unique values, the ``event_keys`` of its log that the index's events must
    equal (None: not compared; the caller compares them, the last check). ``raw``, ``log_raw``,
    ``links``: the file's and the log's bytes and the links as already read (else read here).
    ``none_kept``: the episode has
    neither a checkpoints folder nor a backup folder, and the folders on the way to them
    are plain (``_plain_shows``): then ``_verify_kept_files`` would find nothing. ``sha``: the
    sha256 of ``raw`` (hex), if made."""
    key = f"{show}/{ep}"
    before = VerifyReport()
    after: list[Problem] = []
    if not none_kept:
        _verify_kept_files(writer, before, show, ep, os.path.dirname(path))
    counts = (before.checkpoints, before.backups)
    # the row's data is read only when needed: for its unique values, a file that cannot be read, or
    # when its stored text is not the file's data written out (``row_same``)
    row_data = json_doc(kept_row[2]) if kept_row is not None and keys else None
    row_claims = None if kept_row is None else [
        (r["key"], r["value_sha256"], show, ep) for r in claim_rows(keys, show, ep, row_data)] if keys else []
    try:
        if raw is None:
            raw = diskio.read_file(path)
        if raw is None:
            return before.problems, after, None, [], None, counts, row_claims, None
        parsed = writer.parse_episode(path, raw, show, ep, model=False)
    except StatekitError as exc:
        before.problems.append(problem(exc, path, key))
        # the index rightly keeps the last good state: count that
        if kept_row is not None and row_data is None:
            row_data = json_doc(kept_row[2])
        state = (row_data.get("stage"), row_data.get("costs") or {}) if row_data is not None else None
        return before.problems, after, state, [], None, counts, row_claims, None
    model: Any = parsed.model if parsed.model is not None else Dumped(parsed.dumped)
    held = [(claim.key, claim.sha256, claim.value) for claim in claims_of(keys, model.metadata)]
    log_path = os.path.join(os.path.dirname(path), "events.jsonl")
    _verify_links(before, key, path, log_path, links=links)
    read_log = links is not None  # the log's bytes are those given (None: no log)
    parsed_log = eventlog.parse_log(log_raw) if read_log else None  # (None: each reading its own way)
    raw_sha = sha if sha is not None else sha256_of(raw)
    committed_model = _committed_by_log(writer, before, key, path, log_path, model, raw,
                                        kept_row[0] if kept_row is not None else None,
                                        log_raw if read_log else False, parsed_log, raw_sha)
    if committed_model is not None:  # a pending hand edit: the index must hold the committed version
        model = committed_model
    dumped: dict[str, Any] | None = None
    dumped_text: bytes | None = None  # (orjson's writing of ``dumped``, when made)
    derived: list[tuple[Any, ...]] = []
    try:
        hashes: list[str] | None = None
        if parsed_log is not None:
            lines, hashes = parsed_log.hashed(log_path, model.version)
        else:
            read = eventlog.lines_of(log_raw, log_path, model.version) if read_log \
                else eventlog.read_lines(log_path, model.version)
            lines = [event for event, _raw in read]
        if not eventlog.events_valid(lines):  # (then certainly valid, without a model per line)
            eventlog.validate_events(log_path, lines)  # what events() would refuse
        derived = event_keys(log_path, lines)
        chain = eventlog.chain_problems(log_path, lines, hashes=hashes) if hashes is not None \
            else eventlog.chain_problems(log_path, lines, [raw_line for _event, raw_line in read])
        for message in chain:
            after.append(Problem("chain", log_path, message, key))
        if committed_model is None and any(eventlog.is_chained(e) for e in lines):
            # the last use of the lines' documents and patches: replayed without copying them
            replayed = eventlog.replay(lines, path=log_path, last_only=True, consume=True)
            dumped = parsed.dumped if parsed.dumped is not None else model.model_dump(mode="json")
            dumped_text = text_of(dumped)
            if not replayed or replayed[-1][0] != model.version or not data_same(replayed[-1][1], dumped,
                                                                                   dumped_text):
                after.append(Problem(
                    "chain", log_path, f"{log_path}: replaying the log does not give the data of {path} "
                    f"(version {model.version}): an event's patch was changed, or the file", key))
    except StatekitError as exc:
        after.append(problem(exc, log_path, key, "events"))
        lines = []
    after.extend(_graph_problems(writer, key, path, log_path, model, lines))
    versions = [line["version"] for line in lines]
    # (range(1, version + 1) only once the lengths are equal: a hand-edited version can be huge)
    if len(versions) != model.version or versions != list(range(1, len(versions) + 1)):
        missing = _missing(versions, model.version)
        after.append(Problem(
            "events", log_path, f"{log_path}: the log does not hold versions 1..{model.version} exactly"
            + (f" (missing {missing})" if missing else " (out of order or repeated)"), key))
    foreign = None
    for line in lines:
        if line["show_id"] != show or line["episode_id"] != ep:
            foreign = line
            break
    if foreign is not None:
        after.append(Problem(
            "events", log_path, f"{log_path}: event version {foreign['version']} names "
            f"{foreign['show_id']}/{foreign['episode_id']}, not {key}", key))
    elif lines and lines[-1].get("sha256") != raw_sha:
        after.append(Problem(
            "edited", path, f"{path}: changed outside statekit since version {model.version} "
            f"(run 'statekit sync' to adopt the edit, or 'statekit revert {key}' to throw it away)", key))
    if kept_row is None:
        after.append(Problem("index", path, f"{key}: not in the index (run 'statekit sync')", key))
    else:
        if kept_row[0] != model.version:
            after.append(Problem(
                "index", path, f"{key}: the index holds version {kept_row[0]}, the file version {model.version} "
                "(run 'statekit sync')", key))
        elif not row_same(kept_row[2], dumped if dumped is not None else parsed.dumped
                           if committed_model is None and parsed.dumped is not None
                           else model.model_dump(mode="json"), dumped_text):
            after.append(Problem(
                "index", path, f"{key}: the index's copy of version {kept_row[0]} differs from the file "
                "(run 'statekit sync')", key))
        if (show, ep) in marked and committed_model is None and lines and lines[-1].get("sha256") == raw_sha:
            after.append(Problem(
                "index", path, f"{key}: the index marks a pending hand edit, but the file is committed "
                "(run 'statekit rebuild-index')", key))
    compare = derived if kept_row is not None and lines else None
    assets = (model.key, model.assets) if model.assets else None
    return before.problems, after, (model.stage, model.costs), held, assets, counts, row_claims, compare


_NO_GRAPH = object()

_STRANDINGS: dict[tuple[Any, ...], tuple[Any, Any, str | None]] = {}
"""``_stranding``'s answers, with the graphs they were for; emptied by each verify."""


def _stranding(new: Any, stage: str, previous: str | None, done: bool, old: Any) -> str | None:
    """``graphs.stranding(new, stage, previous, done=done, old=old)``, worked out once for each
    (graphs, stage, previous stage, done) a verify meets (a fifth of an episode's graph checks' time,
    the same few questions asked of every episode). The graphs are frozen models, the answer a
    function of these; an entry names its graphs by identity and holds them (no id reused)."""
    key = (id(new), id(old), stage, previous, done)
    hit = _STRANDINGS.get(key)
    if hit is not None and hit[0] is new and hit[1] is old:
        return hit[2]
    why = stranding(new, stage, previous, done=done, old=old)
    if len(_STRANDINGS) >= 4096:
        _STRANDINGS.clear()
    _STRANDINGS[key] = (new, old, why)
    return why


def _graph_problems(writer: Writer, key: str, path: str, log_path: str, model: Episode,
                    lines: list[dict[str, Any]]) -> list[Problem]:
    """Moves the graph they were made under (the event's ``graph``) does not allow,
    and an episode the current graph strands (``graphs.stranding``)."""
    found = []
    digest: Any = _NO_GRAPH
    graph = None
    for line in lines:
        if line.get("graph") != digest:  # (a log's lines name one graph, mostly: looked up once each)
            digest = line.get("graph")
            graph = writer.graphs.graph(digest)
        reason = illegal_move(graph, line) if graph is not None else None
        if reason is not None:
            found.append(Problem("move", log_path, f"{log_path}: {reason}", key))
    old = graph if lines else None  # (the last line's graph: ``digest`` is its graph's name)
    why = _stranding(writer.pipeline, model.stage, model.previous_stage, model.stage_done, old)
    if why is not None:
        found.append(Problem("stranded", path, f"{key}: stranded by a change of the pipeline: {why} (move it with "
                             "'statekit pipeline migrate --map OLD=NEW' or 'statekit requeue')", key))
    return found


def _verify_links(report: VerifyReport, key: str, *paths: str, links: tuple[Any, ...] | None = None) -> None:
    """An episode file or log with more than one name: a write through one name would
    change the other too (statekit never writes through one: see ``writes``).
    ``links``: ``_links`` of the paths, already taken."""
    for path, link in zip(paths, links or _links(*paths)):
        if link is None:
            continue
        _kind, nlink, own = link
        if nlink > 1 and not own:
            report.problems.append(Problem(
                "hardlink", path, f"{path}: has {nlink} names (hard links); statekit will not write through "
                "it: replace the other names with copies", key))


def _own_backup_link(path: str, st: os.stat_result) -> bool:
    """The other name is statekit's own backup of the file (a write stopped between
    linking the old file and renaming the new one in: ``repair`` clears it)."""
    parts = path.split("/")
    try:
        show, ep = parts[-4], parts[-2]
        root = "/".join(parts[:-5])
        folder = os.path.join(root, ".statekit", "backups", "episodes", show, ep)
        return any(os.path.samestat(st, os.stat(os.path.join(folder, name), follow_symlinks=False))
                   for name in os.listdir(folder))
    except (OSError, IndexError):
        return False


def _committed_by_log(writer: Writer, report: VerifyReport, key: str, path: str, log_path: str, model: Episode,
                      raw: bytes, indexed_version: int | None, log_raw: bytes | None | bool = False,
                      parsed_log: eventlog.ParsedLog | None = None, sha: str | None = None) -> Episode | None:
    """The committed version, when the file holds a pending edit and the chained log rebuilds it.
    ``log_raw``: the log's bytes already read (None: there is none; False: read its end here);
    ``parsed_log``: those bytes read once (``eventlog.parse_log``); ``sha``: the file's sha256."""
    if not writer.chained:
        return None
    if parsed_log is not None and sha is not None:  # the usual answer, without the tail's hashes
        last_event = parsed_log.last_event()
        if last_event is None or not eventlog.is_chained(last_event) or last_event.get("sha256") == sha:
            return None  # (no chained line, or the last one commits the file: ``committing``'s first rule)
    try:
        last, before = eventlog.read_tail(log_path) if log_raw is False else parsed_log.tail() \
            if parsed_log is not None else eventlog.tail_of(log_raw or None)
    except (StatekitError, OSError):
        return None  # reported when the log is read below
    if last is None or not eventlog.is_chained(last.event):
        return None
    which, pending = eventlog.committing(last.event, before.event if before is not None else None,
                                         sha if sha is not None else sha256_of(raw),
                                         model.version, lambda: indexed_version)
    if not pending:
        return None
    line = last if which == 0 else before
    assert line is not None
    try:
        data = writer.committed_data(model.show_id, model.episode_id, line.event["version"])
        return Episode.model_validate(data)
    except (StatekitError, ValueError) as exc:
        report.problems.append(Problem("chain", log_path, f"{log_path}: cannot rebuild the committed version "
                                       f"({exc})", key))
        return None


def _verify_assets(writer: Writer, report: VerifyReport, episode: str, records: dict[str, AssetRecord],
                   directory: str, hashed: dict[str, str | None]) -> None:
    """Each asset's object must hash to its name; the episode folder's copy
    (a hard link to the object, for people) must not have been replaced by
    different content."""

    for name, record in sorted(records.items()):
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
                f"asset {name!r} of {episode}: {problem}", episode))
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
                "asset", copy, f"{copy}: differs from asset {name!r} of {episode} as recorded (sha256 "
                f"{record.sha256[:12]}…); add the edited file with 'statekit asset add' to keep it", episode))


def _verify_kept_files(writer: Writer, report: VerifyReport, show: str, ep: str, directory: str) -> None:
    """Checkpoints must match their own sha256; backups must be restorable."""

    key = f"{show}/{ep}"
    for stage in checkpoint_stages(directory):
        path = os.path.join(directory, "checkpoints", stage + ".json")
        report.checkpoints += 1
        try:
            read_checkpoint(path)
        except StatekitError as exc:
            report.problems.append(problem(exc, path, key, "checkpoint"))
    try:
        backups = writer.backups_of(show, ep)
    except StatekitError as exc:  # e.g. a symlink in place of the backup folder
        report.problems.append(problem(exc, getattr(exc, "path", None) or directory, key, "backup"))
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



