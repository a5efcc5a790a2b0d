"""The operations the crash harness interrupts, and the oracle every crash
state must satisfy.

A scenario prepares a store (its template, built once), then runs one
operation on it. ``Outcome`` holds what the episodes the operation changes
looked like before and after (the only two states a reader may ever see),
computed by running the operation once without faults, with the same fixed
clock the crashed runs use.

The oracle (``check``), on the tree a crash left:

1. the store opens; every episode reads; an episode the operation changes
   is exactly the old or the new (the new, if the call had returned:
   nothing acknowledged is lost; versions never go back); every other
   episode file is byte-identical;
2. each changed episode's event log runs 1..version with no gap, and its
   checkpoints are the old or the new data (the new if the episode says so);
3. ``sync`` makes the index equal a rebuild from the files;
4. the next write to each changed episode succeeds and leaves no temp file
   beside it; ``repair`` then leaves no leftovers anywhere, and ``verify``
   finds nothing wrong.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from statekit import EpisodeNotFoundError, StatekitError, Store
from statekit.files import TEMP_SUFFIX, Disk
from statekit.models import EPISODE_SCHEMA

from ..conftest import episode_file, index_rows

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def clock_at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


SETUP_CLOCK = clock_at(T0)
OP_CLOCK = clock_at(T0 + timedelta(hours=1))
CHECK_CLOCK = clock_at(T0 + timedelta(hours=2))


@dataclass
class Scenario:
    name: str
    op: Callable[[Store], Any]
    targets: tuple[tuple[str, str], ...] = (("s", "e"),)
    prepare: Callable[[Store, str], None] | None = None  # more set-up after the common one (store, format)
    checkpoint: str | None = None  # the stage whose checkpoint the operation writes


def base(store: Store) -> None:
    """Two episodes: ``e`` (the one operated on, version 4, with backups and a
    checkpoint) and ``other``, which no operation may touch."""
    store.create("s", "other", title="Bystander", metadata={"source": "https://archive.org/other"})
    store.create("s", "e", title="Episode", metadata={"source": "https://archive.org/e"})
    store.advance("s", "e", "downloading")
    store.save_checkpoint("s", "e", "downloading", {"part": 1})
    store.update("s", "e", metadata={"note": "first pass"})


def _to_version(store: Store, version: int) -> None:
    n = 0
    while store.get("s", "e").version < version:
        n += 1
        store.update("s", "e", metadata={"note": f"pass {n}"})


def _hand_edit(store: Store, fmt: str) -> None:
    path = episode_file(store, "s", "e")
    if fmt == "yaml":
        text = path.read_text()
        assert "title: Episode\n" in text
        path.write_text(text.replace("title: Episode\n", "title: Episode, retitled by hand\n"))
    else:
        data = json.loads(path.read_text())
        data["title"] = "Episode, retitled by hand"
        path.write_text(json.dumps(data, indent=2) + "\n")


def _schema_1(store: Store, fmt: str) -> None:
    """Rewrite ``e`` as the schema-1 file an older statekit wrote (with the
    event log's hash matching it, as that version would have left it)."""
    path = episode_file(store, "s", "e")
    v2_only = ("lease", "due_at", "hold", "stage_done")
    if fmt == "yaml":
        lines = [line for line in path.read_text().splitlines() if not line.startswith(tuple(k + ":" for k in v2_only))]
        raw = ("\n".join(lines) + "\n").replace(f"schema_version: {EPISODE_SCHEMA}", "schema_version: 1").encode()
    else:
        data = json.loads(path.read_text())
        for key in v2_only:
            data.pop(key, None)
        data["schema_version"] = 1
        raw = (json.dumps(data, indent=2) + "\n").encode()
    path.write_bytes(raw)
    import hashlib

    log = path.parent / "events.jsonl"
    lines = log.read_bytes().splitlines()
    last = json.loads(lines[-1])
    last["sha256"] = hashlib.sha256(raw).hexdigest()
    lines[-1] = json.dumps(last, separators=(",", ":")).encode()
    log.write_bytes(b"\n".join(lines) + b"\n")
    store.rebuild_index()  # as that version's index would have it


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("create", lambda st: st.create("s", "new", title="New", metadata={"source": "x"}),
             targets=(("s", "new"),)),
    Scenario("advance", lambda st: st.advance("s", "e", "downloaded", cost=0.25, message="fetched")),
    Scenario("update", lambda st: st.update("s", "e", title="Episode, renamed", metadata={"note": "second pass"})),
    Scenario("checkpoint", lambda st: st.save_checkpoint("s", "e", "downloading", {"part": 2}),
             checkpoint="downloading"),
    # version 16: rotation lists the backup folder instead of removing one backup by name
    Scenario("rotation", lambda st: st.advance("s", "e", "downloaded"),
             prepare=lambda st, fmt: _to_version(st, 16)),
    Scenario("restore", lambda st: st.restore("s", "e", 2)),
    Scenario("migrate", lambda st: st.migrate(), prepare=lambda st, fmt: _schema_1(st, fmt)),
    Scenario("sync", lambda st: st.sync(), prepare=lambda st, fmt: _hand_edit(st, fmt)),
]}


def build_template(scenario: Scenario, fmt: str, root: Path) -> Path:
    store = Store.init(root, format=fmt, clock=SETUP_CLOCK)
    base(store)
    if scenario.prepare is not None:
        scenario.prepare(store, fmt)
    store.close()
    return root


def open_store(root: str | Path, disk: Disk | None = None, clock: Callable[[], datetime] = OP_CLOCK) -> Store:
    return Store.open(root, disk=disk or Disk(), clock=clock, lock_timeout=2.0)


def _dump(store: Store, show: str, ep: str) -> dict[str, Any] | None:
    try:
        return store.get(show, ep).model_dump(mode="json")
    except EpisodeNotFoundError:
        return None


def _checkpoint(store: Store, show: str, ep: str, stage: str) -> Any:
    try:
        return store.load_checkpoint(show, ep, stage)
    except EpisodeNotFoundError:
        return None


@dataclass
class Outcome:
    """The two states a reader may see of each changed episode."""

    old: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    new: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    old_checkpoint: Any = None
    new_checkpoint: Any = None
    bystanders: dict[str, bytes] = field(default_factory=dict)  # path -> bytes of every other episode's file


def outcome(scenario: Scenario, template: Path, work: Path) -> Outcome:
    """Run the operation once, unharmed, on a copy of the template."""
    copy = work / "reference"
    shutil.copytree(template, copy)
    out = Outcome()
    store = open_store(copy)
    for show, ep in scenario.targets:
        out.old[(show, ep)] = _dump(store, show, ep)
    if scenario.checkpoint:
        out.old_checkpoint = _checkpoint(store, "s", "e", scenario.checkpoint)
    changed = {str(episode_file(store, show, ep).relative_to(copy)) for show, ep in scenario.targets}
    for path in sorted((copy / "shows").rglob("episode.*")):
        rel = str(path.relative_to(copy))
        if rel not in changed:
            out.bystanders[rel] = path.read_bytes()
    scenario.op(store)
    for show, ep in scenario.targets:
        out.new[(show, ep)] = _dump(store, show, ep)
    if scenario.checkpoint:
        out.new_checkpoint = _checkpoint(store, "s", "e", scenario.checkpoint)
    store.close()
    shutil.rmtree(copy)
    return out


def temp_files(root: str | Path) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob(f"*{TEMP_SUFFIX}") if p.is_file())


def check(root: Path, scenario: Scenario, expected: Outcome, *, acknowledged: bool) -> list[str]:
    """The oracle: every way the crash state ``root`` breaks a guarantee
    (empty if none). Leaves ``root`` repaired."""
    problems: list[str] = []
    try:
        store = open_store(root, clock=CHECK_CLOCK)
    except StatekitError as exc:
        return [f"the store does not open: {exc.one_line()}"]
    try:
        _check_reads(store, root, scenario, expected, acknowledged, problems)
        if problems:
            return problems
        store.sync()
        problems += _index_against_rebuild(store, root)
        for show, ep in scenario.targets:  # the next write works and cleans up after the crash
            try:
                before = store.get(show, ep).version
            except EpisodeNotFoundError:
                before = store.create(show, ep, title="after the crash").version
            after = store.update(show, ep, metadata={"after": "crash"}).version
            if after != before + 1:
                problems.append(f"{show}/{ep}: the next write made version {after}, not {before + 1}")
            left = temp_files(episode_file(store, show, ep).parent)
            if left:
                problems.append(f"{show}/{ep}: the next write left temp files {left}")
            versions = [e.version for e in store.events(show, ep)]
            if versions != list(range(1, after + 1)):
                problems.append(f"{show}/{ep}: events after the next write are versions {versions}")
        report = store.repair()
        if report.problems:
            problems.append(f"repair could not fix: {report.problems}")
        left = temp_files(root)
        if left:
            problems.append(f"temp files survive repair: {left}")
        verified = store.verify()
        if verified.problems:
            problems.append("verify after repair: " + "; ".join(f"{p.kind}: {p.message}" for p in verified.problems))
    except StatekitError as exc:
        problems.append(f"raised {type(exc).__name__}: {exc.one_line()}")
    finally:
        store.close()
    return problems


def _check_reads(store: Store, root: Path, scenario: Scenario, expected: Outcome, acknowledged: bool,
                 problems: list[str]) -> None:
    for rel, raw in expected.bystanders.items():
        path = root / rel
        if not path.exists() or path.read_bytes() != raw:
            problems.append(f"{rel} changed, though the operation was not about it")
    for (show, ep), old in expected.old.items():
        new = expected.new[(show, ep)]
        try:
            seen = _dump(store, show, ep)
        except StatekitError as exc:
            problems.append(f"{show}/{ep} does not read: {exc.one_line()}")
            continue
        if acknowledged and seen != new:
            problems.append(f"{show}/{ep}: the call returned, but the file is {_which(seen, old, new)}")
        elif seen != old and seen != new:
            problems.append(f"{show}/{ep} is neither the old nor the new state: {_which(seen, old, new)}")
        if seen is not None:
            versions = [e.version for e in store.events(show, ep)]
            if versions != list(range(1, seen["version"] + 1)):
                problems.append(f"{show}/{ep}: version {seen['version']} but events {versions}")
        if scenario.checkpoint and seen is not None:
            try:
                data = _checkpoint(store, show, ep, scenario.checkpoint)
            except StatekitError as exc:
                problems.append(f"{show}/{ep}: checkpoint does not read: {exc.one_line()}")
            else:
                if seen == new and data != expected.new_checkpoint:
                    problems.append(f"{show}/{ep}: records the new checkpoint but it holds {data}")
                elif data not in (expected.old_checkpoint, expected.new_checkpoint):
                    problems.append(f"{show}/{ep}: checkpoint is {data}, neither old nor new")
    for show in store.shows():
        store.get_show(show)


def _which(seen: dict[str, Any] | None, old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    if seen is None:
        return "missing"
    if seen == old:
        return "the old state"
    if new is None:
        return f"version {seen['version']}"
    diff = sorted(k for k in set(seen) | set(new) if seen.get(k) != new.get(k))
    return f"version {seen['version']} (differs from the new state in {diff})"


def _index_against_rebuild(store: Store, root: Path) -> list[str]:
    synced = index_rows(store)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "copy"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("index.db*"))
        rebuilt = Store.open(copy, clock=CHECK_CLOCK)
        try:
            rebuilt.rebuild_index()
            fresh = index_rows(rebuilt)
        finally:
            rebuilt.close()
    if synced != fresh:
        tables = [t for t in fresh if synced.get(t) != fresh[t]]
        return [f"after sync the index differs from a rebuild in {tables}"]
    return []


def fresh_copy(template: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target)
    return target
