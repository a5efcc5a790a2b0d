"""The bad-input corpus (issue 5): thousands of damaged store files, each
giving a clear error or a correct read, through the Python API and the CLI.

Every case of ``corpus.generate`` is planted in a fresh copy of a template
store (YAML and JSON) holding the damaged episode ``s/target`` (8 versions,
3 backups, a checkpoint, an error history) and two healthy episodes. Then
every public call that touches it runs: ``Store.open``, ``get``, ``events``,
``load_checkpoint``, ``resume_stage``, ``verify``, ``advance``, ``update``,
``save_checkpoint``, ``sync``, ``rebuild_index``, ``repair``. The rules:

- only ``StatekitError`` subclasses escape, with a one-line message (never a
  KeyError, TypeError, RecursionError...), and no call hangs;
- a read that succeeds returns exactly what the file says (checked against
  an independent strict parser), and a changed episode file that still
  parses is reported by ``verify`` (its bytes no longer match the sha256 in
  the log); a damaged log that ``verify`` passes must read back as the
  strict parser reads it and be indexable by ``rebuild_index``;
- a refused file is never rewritten (until ``repair`` restores a backup);
  after ``repair`` either ``verify`` is clean or ``repair`` said what it
  could not fix;
- every other episode, and everything outside the root, stays
  byte-identical; no YAML tag ever runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from statekit import (
    CorruptFileError,
    SchemaVersionError,
    StatekitError,
    Store,
    UnsafePathError,
    ValidationError,
)
from statekit.models import Episode, Event, StoreConfig

from ..conftest import snapshot
from .cli import cli_problems, statekit
from .conftest import STRESS, size
from .corpus import (
    CHECKPOINT_STAGE,
    MARKER_NAME,
    Case,
    NotAFile,
    build_history,
    generate,
    reference_json,
    reference_load,
    tree_state,
)
from .figures import report as record

CASE_TIMEOUT_S = 10
SHOW, EP = "s", "target"


# --- the template stores -------------------------------------------------------------


@dataclass
class Template:
    fmt: str
    root: Path
    originals: dict[str, bytes]
    model: dict[str, Any]
    events: list[dict[str, Any]]
    checkpoint: dict[str, Any]
    others: dict[str, bytes]
    ledger: bool = True
    """A store at the ledger's format (the default); False: the format before it (unchained logs)."""


def target_paths(root: Path, fmt: str, show: str = SHOW, ep: str = EP) -> dict[str, Path]:
    folder = root / "shows" / show / "episodes" / ep
    return {"episode": folder / f"episode.{fmt}", "events": folder / "events.jsonl",
            "checkpoint": folder / "checkpoints" / f"{CHECKPOINT_STAGE}.json", "config": root / "statekit.yaml"}


def _is_other(rel: str) -> bool:
    """A file that belongs to neither the damaged episode nor the machine's own bookkeeping."""
    mine = (f"shows/{SHOW}/episodes/{EP}/", f".statekit/backups/episodes/{SHOW}/{EP}/", ".statekit/trash/",
            ".statekit/errors.jsonl", "statekit.yaml")
    return not rel.startswith(mine)


def make_template(base: Path, fmt: str, ledger: bool = True) -> Template:
    root = base / f"template-{fmt}{'' if ledger else '-unchained'}"
    store = Store.init(root, format=fmt, ledger=ledger)
    build_history(store, SHOW, EP)
    store.create(SHOW, "other", title="other", metadata={"k": [1, 2]})
    store.advance(SHOW, "other", "downloading", cost=0.5)
    store.create("t", "e", title="t/e")
    store.save_checkpoint("t", "e", "discovered", {"x": [1, 2]})
    assert store.verify().clean
    model = store.get(SHOW, EP).model_dump(mode="json")
    events = [e.model_dump(mode="json") for e in store.events(SHOW, EP)]
    checkpoint = store.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE)
    assert checkpoint is not None
    store.close()
    originals = {k: p.read_bytes() for k, p in target_paths(root, fmt).items()}
    others = {k: v for k, v in snapshot(root).items() if _is_other(k)}
    return Template(fmt, root, originals, model, events, checkpoint, others, ledger)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Template]:
    """A ledger store in each format, and a store at the format before the ledger
    (old stores stay supported until ``statekit migrate --ledger``)."""
    base = tmp_path_factory.mktemp("corpus-templates")
    made = {fmt: make_template(base, fmt) for fmt in ("yaml", "json")}
    made["yaml-unchained"] = make_template(base, "yaml", ledger=False)
    return made


# --- planting damage ------------------------------------------------------------------------


def plant(path: Path, damage: bytes | NotAFile, original: bytes, outside: Path) -> None:
    """Put ``damage`` where the file ``path`` was."""
    if isinstance(damage, bytes):
        path.write_bytes(damage)
        return
    path.unlink()
    kind = damage.kind
    if kind == "dir":
        path.mkdir()
    elif kind == "dir-with-file":
        path.mkdir()
        (path / path.name).write_bytes(original)
    elif kind == "symlink-outside":  # a valid copy, outside the root: must not be read
        copy = outside / f"copy-of-{path.name}"
        copy.write_bytes(original)
        path.symlink_to(copy)
    elif kind == "symlink-dir":
        path.symlink_to(outside, target_is_directory=True)
    elif kind == "dangling":
        path.symlink_to(outside / "no-such-file")
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(path.parent)  # a socket's path must be short: bind it by its name
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)
        finally:
            os.chdir(here)
    elif kind == "chardev":
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    elif kind == "symlink-devzero":
        path.symlink_to("/dev/zero")
    else:  # pragma: no cover
        raise AssertionError(kind)


# --- running calls ---------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def ring(_sig: int, _frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Uncaught(Exception):
    """A call raised something other than a StatekitError (a bug)."""


@dataclass
class Run:
    """What the calls of one case did."""

    case: Case
    fmt: str
    failures: list[str] = field(default_factory=list)
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def call(self, name: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, result) or (False, the StatekitError); anything else is a failure."""
        self.calls += 1
        try:
            return True, fn()
        except StatekitError as exc:
            line = exc.one_line()
            if "\n" in line or not line.strip():
                self.fail(f"{name}: {type(exc).__name__} message is not one line: {line!r}")
            self.errors[type(exc).__name__] += 1
            return False, exc
        except Hang:
            raise
        except Exception as exc:
            self.fail(f"{name}: uncaught {type(exc).__name__}: {str(exc)[:200]}")
            raise Uncaught(name) from exc

    def fail(self, message: str) -> None:
        self.failures.append(f"[{self.fmt} {self.case.target} {self.case.label}] {message}")


def problems_for(report: Any, key: str = f"{SHOW}/{EP}") -> list[Any]:
    return [p for p in report.problems if p.episode == key or key.replace("/", os.sep + "episodes" + os.sep) in p.path
            or f"/{SHOW}/{EP}/" in p.path]


def _same_model(got: Episode, data: Any) -> bool | None:
    """Does ``got`` equal what the strictly parsed file data validates to?
    None if the data does not validate (then statekit should not have read it)."""
    try:
        expected = Episode.model_validate(data)
    except Exception:  # noqa: BLE001 - pydantic's own error: the reference refuses it
        return None
    return expected.model_dump(mode="json") == got.model_dump(mode="json")


# --- one case ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # rejected | read-same | read-changed | read-changed-undetectable | opened | written
    run: Run


def run_case(tpl: Template, work: Path, case: Case, heavy: bool = True) -> Outcome:
    root = work / "root"
    outside = work / "outside"
    shutil.copytree(tpl.root, root, symlinks=True)
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"outside the root\n")
    paths = target_paths(root, tpl.fmt)
    original = tpl.originals[case.target]
    damage = case.mutate(original)
    plant(paths[case.target], damage, original, outside)
    outside_before = tree_state(outside)
    run = Run(case, tpl.fmt + ("" if tpl.ledger else "-unchained"))
    try:
        with deadline(CASE_TIMEOUT_S):
            kind = CHECKS[case.target](tpl, root, paths, damage, run, heavy)
    except Uncaught:
        kind = "uncaught"
    except Hang as exc:
        run.fail(f"hang: {exc}")
        kind = "hang"
    others = {k: v for k, v in snapshot_safe(root).items() if _is_other(k)}
    if case.target == "config" and kind != "rejected":
        # a config statekit opened with another graph (a retry policy, say): the store records that
        # graph in .statekit/pipelines/ (a new file; the ones there stay as they were)
        others = {k: v for k, v in others.items() if k in tpl.others or not k.startswith(".statekit/pipelines/")}
    if (case.target != "config" or kind != "rejected") and others != tpl.others:
        changed = sorted(set(others.items()) ^ set(tpl.others.items()))
        run.fail(f"other episodes changed: {[c[0] for c in changed][:5]}")
    if tree_state(outside) != outside_before:
        run.fail("something outside the root changed")
    return Outcome(kind, run)


def snapshot_safe(root: Path) -> dict[str, bytes]:
    """``snapshot``, skipping what is not a regular file (planted fifos, sockets, links)."""
    out = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, root)
            # (the index and verify's memo are caches: the damaged episode leaves them, as it should)
            if rel.startswith((".statekit/locks", ".statekit/index.db", ".statekit/verified.db")) \
                    or not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            with open(p, "rb") as f:
                out[rel] = f.read()
    return out


def _file_state(path: Path) -> Any:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        return path.read_bytes()
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    return ("other", stat.S_IFMT(st.st_mode))


def _repair_and_check(store: Store, run: Run) -> Any:
    ok, report = run.call("repair", store.repair)
    if not ok:
        run.fail(f"repair raised {type(report).__name__}: {report.one_line()}")
        return None
    ok, after = run.call("verify after repair", store.verify)
    if ok and not after.clean and not report.problems:
        run.fail(f"repair reported nothing left to fix, but verify still finds: {after.problems[0].message[:200]}")
    return report


def _unversioned(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("version", "updated_at")}


def _strictly_same(got: Episode, damage: Any, tpl: Template, run: Run) -> None:
    """What statekit read from the file must be what an independent strict parser reads."""
    try:
        data = reference_load(damage, tpl.fmt)
    except Exception as exc:  # noqa: BLE001 - the independent parser refuses
        run.fail(f"statekit read what a strict parser refuses ({type(exc).__name__}: {str(exc)[:120]})")
        data = None
    if isinstance(data, dict) and data.get("schema_version") == tpl.model["schema_version"]:
        if _same_model(got, data) is False:
            run.fail("statekit read something other than what the file says")
        elif _same_model(got, data) is None:
            run.fail("statekit accepted data the model refuses when read strictly")


def check_episode(tpl: Template, root: Path, paths: dict[str, Path], damage: Any, run: Run, heavy: bool) -> str:
    """A ledger store: a changed episode file is a pending edit (readable) or a damaged one;
    either way every read returns the committed version, which the log rebuilds, and says so."""
    if not tpl.ledger:
        return check_unchained_episode(tpl, root, paths, damage, run, heavy)
    path = paths["episode"]
    ok, store = run.call("Store.open", lambda: Store.open(root))
    if not ok:
        run.fail(f"a damaged episode stopped the store from opening: {store.one_line()}")
        return "rejected"
    changed = damage != tpl.originals["episode"]
    readable, got = run.call("get", lambda: store.get(SHOW, EP))
    damaged_state = _file_state(path)
    # what statekit makes of the file's own bytes (the pending edit, when it is one)
    parsed, edit = run.call("reading the file", lambda: store.writer.load(SHOW, EP)[1].model)
    if isinstance(damage, NotAFile) and parsed:
        run.fail(f"read through {damage.kind}")
    if parsed:
        _strictly_same(edit, damage, tpl, run)
    # a file of a newer schema is refused, never taken for damage (a newer statekit may have written
    # it); so is a symlink in the file's place (never followed)
    newer = not readable and isinstance(got, SchemaVersionError) and type(got.found) is int \
        and got.found > got.supported
    if not readable:
        if not newer and not isinstance(got, UnsafePathError):
            run.fail(f"get() refused, but the log holds the committed version: {got.one_line()[:200]}")
        kind = "rejected"
    else:
        if got.model_dump(mode="json") != tpl.model:
            run.fail("get() did not return the committed version")
        if changed != (got.pending is not None):
            run.fail("get() did not say the file holds a pending edit" if changed else
                     "get() called an unchanged file a pending edit")
        elif got.pending is not None:
            if got.pending["path"] != os.fspath(path):
                run.fail(f"the pending edit does not name the file: {got.pending}")
            if (got.pending["fields"] is None) == parsed:
                run.fail(f"the pending edit says the file {'cannot' if parsed else 'can'} be read: {got.pending}")
        kind = "read-same" if not changed else "pending-edit" if parsed else "rejected"
    ok, _events = run.call("events", lambda: store.events(SHOW, EP))
    if not ok and readable:
        run.fail("events() refused the committed events of an episode whose log is intact")
    ok, data = run.call("load_checkpoint", lambda: store.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE))
    if ok and data != tpl.checkpoint:
        run.fail("load_checkpoint returned other data")
    ok, report = run.call("verify", store.verify)
    if not ok:
        run.fail("verify raised instead of reporting")
    elif changed and not problems_for(report):
        run.fail(f"verify did not report the changed episode file ({kind})")
    for name, fn in (("advance", lambda: store.advance(SHOW, EP, "downloaded")),
                     ("update", lambda: store.update(SHOW, EP, title="after the damage"))):
        got_before, before = run.call("get before " + name, lambda: store.get(SHOW, EP))
        state = _file_state(path)
        ok, result = run.call(name, fn)
        if not got_before:
            if ok or _file_state(path) != state:
                run.fail(f"{name} wrote over a file get() refused")
            continue
        if ok and not parsed and before.pending is not None:
            run.fail(f"{name} wrote over a file that cannot be read")
        if not ok and _file_state(path) != state:
            run.fail(f"{name} was refused but changed the file")
        if ok:
            # a valid pending edit is adopted first, as its own version (one only of layout is not)
            adopted = before.pending is not None and bool(before.pending["fields"])
            back = run.call("get after " + name, lambda: store.get(SHOW, EP))
            if not back[0] or back[1] != result or back[1].pending is not None:
                run.fail(f"{name} did not read back as written")
            if result.version != before.version + 1 + adopted:
                run.fail(f"{name} wrote version {result.version} over committed version {before.version} "
                         f"({'with' if adopted else 'without'} a pending edit to adopt)")
    if heavy:
        _sync(store, run)
        if not parsed and _file_state(path) != damaged_state:
            run.fail("sync changed a file that cannot be read")
        ok, report = run.call("verify", store.verify)
        if ok and not parsed and not problems_for(report):
            run.fail("verify passed an unreadable episode after sync")
        ok, listed = run.call("list", store.list)
        if ok and not parsed and [e.pending is not None for e in listed if e.episode_id == EP] != [True]:
            run.fail("list() after sync does not mark the unreadable file's pending edit")
        _repair_and_check(store, run)
        if not parsed and not newer and not isinstance(damage, NotAFile):
            ok, after = run.call("get after repair", lambda: store.get(SHOW, EP))
            # as a new version with its own event: the same data, one version on
            if not ok or after.pending is not None or _unversioned(after.model_dump(mode="json")) != \
                    _unversioned(tpl.model):
                run.fail("repair did not put the committed version back")
    store.close()
    return kind


def check_unchained_episode(tpl: Template, root: Path, paths: dict[str, Path], damage: Any, run: Run,
                            heavy: bool) -> str:
    """A store made before the ledger: reads take the file as it is, and refuse a damaged one."""
    path = paths["episode"]
    ok, store = run.call("Store.open", lambda: Store.open(root))
    if not ok:
        run.fail(f"a damaged episode stopped the store from opening: {store.one_line()}")
        return "rejected"
    readable, got = run.call("get", lambda: store.get(SHOW, EP))
    damaged_state = _file_state(path)
    changed = damage != tpl.originals["episode"]
    if isinstance(damage, NotAFile) and readable:
        run.fail(f"read through {damage.kind}")
    if readable:
        try:
            data = reference_load(damage, tpl.fmt)
        except Exception as exc:  # noqa: BLE001 - the independent parser refuses
            run.fail(f"statekit read what a strict parser refuses ({type(exc).__name__}: {str(exc)[:120]})")
            data = None
        if isinstance(data, dict) and data.get("schema_version") == tpl.model["schema_version"]:
            if _same_model(got, data) is False:
                run.fail("get() returned something other than what the file says")
            elif _same_model(got, data) is None:
                run.fail("get() accepted data the model refuses when read strictly")
        kind = "read-same" if got.model_dump(mode="json") == tpl.model else "read-changed"
    else:
        kind = "rejected"
        error = got
        where = os.fspath(path)
        if isinstance(error, (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError)) and \
                where not in error.one_line():
            run.fail(f"the error does not name the file: {error.one_line()[:200]}")
    ok, _events = run.call("events", lambda: store.events(SHOW, EP))
    if ok and not readable:
        run.fail("events() answered for an episode get() refused")
    ok, data = run.call("load_checkpoint", lambda: store.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE))
    if ok and data != tpl.checkpoint:
        run.fail("load_checkpoint returned other data")
    ok, report = run.call("verify", store.verify)
    if not ok:
        run.fail("verify raised instead of reporting")
    elif changed and not problems_for(report):
        run.fail(f"verify did not report the damaged episode file ({kind})")
    for name, fn in (("advance", lambda: store.advance(SHOW, EP, "downloaded")),
                     ("update", lambda: store.update(SHOW, EP, title="after the damage"))):
        before = store.get(SHOW, EP) if readable else None
        ok, result = run.call(name, fn)
        if ok and not readable:
            run.fail(f"{name} wrote over a file get() refused")
        if not readable and _file_state(path) != damaged_state:
            run.fail(f"{name} changed a file get() refused")
        if ok and before is not None:
            back = run.call("get after " + name, lambda: store.get(SHOW, EP))
            if not back[0] or back[1] != result or result.version != before.version + 1:
                run.fail(f"{name} did not read back as written")
    if heavy:
        _sync(store, run)
        if not readable and _file_state(path) != damaged_state:
            run.fail("sync changed a file get() refused")
        ok, report = run.call("verify", store.verify)
        if ok and not readable and not problems_for(report):
            run.fail("verify passed an unreadable episode after sync")
        _repair_and_check(store, run)
        if (not readable and isinstance(got, (CorruptFileError, ValidationError)) and not isinstance(damage, NotAFile)
                and not run.call("get after repair", lambda: store.get(SHOW, EP))[0]):
            run.fail("repair left a damaged file with valid backups unreadable")
    store.close()
    return kind


def _sync(store: Store, run: Run) -> None:
    ok, synced = run.call("sync", store.sync)
    if not ok:
        run.fail(f"sync raised: {synced.one_line()[:200]}")


def _reference_log(raw: bytes, committed: int) -> list[dict[str, Any]] | None:
    """The committed events as a strict parser reads the log; None if a line
    before the last committed event cannot be read. What follows the last
    committed event is an uncommitted tail (a crashed append; the next write
    drops it), so it may be anything."""
    parts = raw.split(b"\n")
    parts.pop()  # a torn last line (or nothing)
    out: list[dict[str, Any]] = []
    unreadable = False
    for line in parts:
        try:
            event = reference_json(line)
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict) or type(event.get("version")) is not int:
            unreadable = True
            continue
        if event["version"] <= committed:
            if unreadable:
                return None
            out.append(event)
    return out


def check_events(tpl: Template, root: Path, paths: dict[str, Path], damage: Any, run: Run, heavy: bool) -> str:
    ok, store = run.call("Store.open", lambda: Store.open(root))
    if not ok:
        run.fail(f"a damaged event log stopped the store from opening: {store.one_line()}")
        return "rejected"
    ok, model = run.call("get", lambda: store.get(SHOW, EP))
    if not ok:
        run.fail(f"get() refused an intact episode file because of its log: {model.one_line()[:200]}")
        return "rejected"
    readable, events = run.call("events", lambda: store.events(SHOW, EP))
    ok, report = run.call("verify", store.verify)
    if not ok:
        run.fail("verify raised instead of reporting")
        return "rejected"
    reported = bool(problems_for(report))
    ref_log = _reference_log(damage, model.version) if isinstance(damage, bytes) else None
    # damage verify can still see after a new event is appended: not just a wrong sha256 in the last line
    structural = ref_log is None or [e["version"] for e in ref_log] != list(range(1, model.version + 1))
    kind = "rejected" if not readable else "read-same" if [e.model_dump(mode="json") for e in events] == \
        tpl.events else "read-changed"
    if isinstance(damage, NotAFile) and readable:
        run.fail(f"events() read through {damage.kind}")
    if not reported:
        ref = ref_log
        sha = hashlib.sha256(tpl.originals["episode"]).hexdigest()
        if ref is None:
            run.fail("verify passed a log a strict parser cannot read")
        elif [e["version"] for e in ref] != list(range(1, model.version + 1)) or ref[-1].get("sha256") != sha:
            run.fail("verify passed a log whose committed events are not versions 1..N ending at the file's sha256")
        elif not readable:
            run.fail(f"verify passed a log events() refuses: {events.one_line()[:200]}")
        else:
            try:
                expected = [Event.model_validate(e).model_dump(mode="json") for e in ref]
            except Exception:  # noqa: BLE001
                expected = None
            if expected != [e.model_dump(mode="json") for e in events]:
                run.fail("events() differs from what the log says")
            if kind == "read-changed":
                kind = "read-changed-undetectable"  # e.g. a flipped letter in a message: no per-line checksum
        if heavy or (isinstance(damage, bytes) and damage != tpl.originals["events"]):
            ok, rebuilt = run.call("rebuild_index", store.rebuild_index)
            if ok and problems_for(rebuilt):
                run.fail("verify passed the log but rebuild_index cannot index it: "
                         + rebuilt.problems[0].message[:200])
    for name, fn in (("advance", lambda: store.advance(SHOW, EP, "downloaded")),
                     ("update", lambda: store.update(SHOW, EP, title="after the damage"))):
        ok, result = run.call(name, fn)
        if ok:
            back = run.call("get after " + name, lambda: store.get(SHOW, EP))
            if not back[0] or back[1] != result:
                run.fail(f"{name} did not read back as written")
            if reported and structural:
                ok, again = run.call("verify after write", store.verify)
                if ok and again.clean:
                    run.fail(f"{name} over a damaged log left no trace of the damage for verify")
    if heavy:
        _sync(store, run)
        _repair_and_check(store, run)
    store.close()
    return kind


def check_checkpoint(tpl: Template, root: Path, paths: dict[str, Path], damage: Any, run: Run, heavy: bool) -> str:
    ok, store = run.call("Store.open", lambda: Store.open(root))
    if not ok:
        run.fail(f"a damaged checkpoint stopped the store from opening: {store.one_line()}")
        return "rejected"
    readable, data = run.call("load_checkpoint", lambda: store.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE))
    if readable:
        kind = "read-same" if data == tpl.checkpoint else "read-changed"
        if data is not None and data != tpl.checkpoint:
            run.fail("load_checkpoint returned data other than what was saved (its sha256 covers the data)")
        if isinstance(damage, NotAFile) and data is not None:
            run.fail(f"load_checkpoint read through {damage.kind}")
    else:
        kind = "rejected"
        if os.fspath(paths["checkpoint"]) not in data.one_line():
            run.fail(f"the error does not name the file: {data.one_line()[:200]}")
    run.call("resume_stage", lambda: store.resume_stage(SHOW, EP))
    ok, report = run.call("verify", store.verify)
    if not ok:
        run.fail("verify raised instead of reporting")
    else:
        flagged = [p for p in report.problems if p.kind == "checkpoint"]
        if not readable and not flagged:
            run.fail("verify did not report a checkpoint load_checkpoint refuses")
        if readable and data is not None and flagged:
            run.fail(f"verify reports a checkpoint load_checkpoint reads: {flagged[0].message[:200]}")
    ok, model = run.call("get", lambda: store.get(SHOW, EP))
    if not ok:
        run.fail(f"a damaged checkpoint made the episode unreadable: {model.one_line()[:200]}")
    run.call("events", lambda: store.events(SHOW, EP))
    run.call("advance", lambda: store.advance(SHOW, EP, "downloaded"))
    ok, _ = run.call("save_checkpoint", lambda: store.save_checkpoint(SHOW, EP, CHECKPOINT_STAGE, {"fresh": 1}))
    if ok:
        back = run.call("load_checkpoint after save", lambda: store.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE))
        if back != (True, {"fresh": 1}):
            run.fail("a checkpoint saved over a damaged one does not read back")
    if heavy:
        _sync(store, run)
        _repair_and_check(store, run)
    store.close()
    return kind


def check_config(tpl: Template, root: Path, paths: dict[str, Path], damage: Any, run: Run, heavy: bool) -> str:
    before = snapshot_safe(root)
    ok, store = run.call("Store.open", lambda: Store.open(root))
    if not ok:
        if snapshot_safe(root) != before:
            run.fail("a refused statekit.yaml changed files")
        return "rejected"
    if isinstance(damage, NotAFile):
        run.fail(f"Store.open read statekit.yaml through {damage.kind}")
    try:
        expected = StoreConfig.model_validate(reference_load(damage, "yaml"))
    except Exception as exc:  # noqa: BLE001 - the strict reading refuses
        run.fail(f"Store.open accepted a statekit.yaml a strict reader refuses: {type(exc).__name__}: {str(exc)[:150]}")
    else:
        if expected.model_dump(mode="json") != store.config.model_dump(mode="json"):
            run.fail("the config statekit opened is not what statekit.yaml says")
    kind = "opened"
    run.call("get", lambda: store.get(SHOW, EP))
    run.call("list", store.list)
    ok, _ = run.call("verify", store.verify)
    if not ok:
        run.fail("verify raised on a store whose config opened")
    store.close()
    return kind


CHECKS: dict[str, Callable[[Template, Path, dict[str, Path], Any, Run, bool], str]] = {
    "episode": check_episode, "events": check_events, "checkpoint": check_checkpoint, "config": check_config,
}


# --- figures ------------------------------------------------------------------------------------


# --- the API corpus ------------------------------------------------------------------------------

BULK = {"truncate", "bitflip", "zero_tail"}


@pytest.mark.parametrize("fmt", ["yaml", "json", "yaml-unchained"])
def test_every_corpus_file_gives_a_clear_error_or_a_correct_read(
        templates: dict[str, Template], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    tpl = templates[fmt]
    monkeypatch.chdir(tmp_path)  # a python tag that ran would leave MARKER_NAME here
    cases = generate(tpl.originals, tpl.fmt, full=STRESS)
    outcomes: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {}
    failures: list[str] = []
    calls = 0
    errors: Counter[str] = Counter()
    started = time.monotonic()
    bulk: Counter[str] = Counter()
    heavy_runs = 0
    cleaner = ThreadPoolExecutor(1)  # removing each case's copy overlaps the next case
    for number, case in enumerate(cases):
        work = tmp_path / f"c{number}"
        work.mkdir()
        # the bulk categories (thousands of truncations and bit flips) run the reads and writes;
        # every 10th of them, and every case of the other categories, also sync, rebuild and repair
        bulk[case.target] += case.category in BULK
        heavy = case.category not in BULK or bulk[case.target] % 10 == 1
        heavy_runs += heavy
        t0 = time.monotonic()
        outcome = run_case(tpl, work, case, heavy)
        if os.environ.get("CORPUS_TRACE"):
            print(f"{time.monotonic() - t0:6.3f} {outcome.kind:10} {case.target} {case.label}", flush=True)
        cleaner.submit(shutil.rmtree, work)
        outcomes[outcome.kind] += 1
        by_category.setdefault(f"{case.target}/{case.category}", Counter())[outcome.kind] += 1
        failures += outcome.run.failures
        calls += outcome.run.calls
        errors += outcome.run.errors
    cleaner.shutdown(wait=True)
    assert not (tmp_path / MARKER_NAME).exists() and not Path("/tmp", MARKER_NAME).exists(), "a YAML tag ran code"
    record(f"corpus-api-{fmt}", {
        "inputs": len(cases), "with_sync_rebuild_repair": heavy_runs, "calls": calls, "outcomes": dict(outcomes),
        "failures": len(failures),
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())}, "errors_raised": dict(errors),
        "seconds": round(time.monotonic() - started, 1), "tier": "full" if STRESS else "fast",
    })
    if failures and os.environ.get("CORPUS_FAILURES"):
        Path(f"{os.environ['CORPUS_FAILURES']}.{fmt}").write_text("\n".join(failures) + "\n")
    assert not failures, f"{len(failures)} failures, e.g.:\n" + "\n".join(failures[:40])
    assert outcomes["rejected"] and (outcomes["read-same"] + outcomes["read-changed"] + outcomes["pending-edit"]), \
        outcomes


# --- the CLI on a sample of the corpus ---------------------------------------------------------------


def _sample(cases: list[Case], n: int, seed: int) -> list[Case]:
    """``n`` cases, round-robin over (target, category), so every kind of damage is in the sample."""
    import random

    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.target, case.category), []).append(case)
    for group in groups.values():
        rng.shuffle(group)
    out: list[Case] = []
    while len(out) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(out) < n:
                out.append(groups[key].pop())
    return out


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_the_cli_reports_a_sample_of_the_corpus_in_one_line(
        templates: dict[str, Template], tmp_path: Path, fmt: str) -> None:
    """Many damaged episodes in one store: ``verify``, ``list``, ``sync`` and
    ``show`` of a sample, as real processes; what each says agrees with the API."""
    tpl = templates[fmt]
    n_damaged, n_show = size(12, 160), size(1, 40)
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    store = Store.init(root, format=fmt)
    for i in range(n_damaged):
        build_history(store, "c", f"e{i:04d}")
    store.create("h", "healthy", title="untouched")
    store.close()
    cases = _sample([c for c in generate(tpl.originals, fmt, full=STRESS) if c.target != "config"], n_damaged,
                    seed=len(fmt))
    damaged: dict[str, Case] = {}
    for i, case in enumerate(cases):
        ep = f"e{i:04d}"
        path = target_paths(root, fmt, "c", ep)[case.target]
        original = path.read_bytes()
        plant(path, case.mutate(original), original, outside)
        damaged[ep] = case
    # what the API says
    api = Store.open(root)
    readable = {}
    for ep in damaged:
        try:
            api.get("c", ep), api.events("c", ep), api.resume_stage("c", ep)
            readable[ep] = True
        except StatekitError:
            readable[ep] = False
    report = api.verify()
    flagged = {p.episode for p in report.problems if p.episode}
    api.close()
    shown = sorted(damaged)[:: max(1, len(damaged) // n_show)][:n_show]
    failures: list[str] = []
    # read-only commands run side by side; then sync (with list beside it: WAL readers never block)
    with ThreadPoolExecutor(2) as pool:
        reads = [("verify",), *[("show", f"c/{ep}") for ep in shown]]
        first = list(pool.map(lambda args: statekit(root, *args), reads))
        writes = fmt == "yaml" or STRESS  # the fast tier syncs one store of the two
        second = list(pool.map(lambda args: statekit(root, *args), [("sync",), ("list",)] if writes else []))
    verify, shows = first[0], first[1:]
    failures += cli_problems(verify, (0, 1))
    if verify.code != (0 if report.clean else 1):
        failures.append(f"statekit verify exited {verify.code}; the API found {len(report.problems)} problems")
    for key in flagged:
        ep = key.split("/")[1]
        if f"/c/episodes/{ep}/" not in verify.out and key not in verify.out:
            failures.append(f"statekit verify does not name {key} ({damaged.get(ep, 'healthy')})")
    for ep, result in zip(shown, shows):
        failures += [f"{p} ({damaged[ep].target} {damaged[ep].label})" for p in cli_problems(result, (0, 2))]
        if result.code != (0 if readable[ep] else 2):
            failures.append(f"statekit show c/{ep} exited {result.code}, the API read it: {readable[ep]} "
                            f"({damaged[ep].target} {damaged[ep].label})")
    if second:
        synced, listing = second
        failures += cli_problems(synced, (0, 1))
        failures += cli_problems(listing, (0,))
        if "healthy" not in listing.out:
            failures.append("statekit list lost the healthy episode")
    if STRESS:  # after sync: verify again, and every episode sync could not adopt is still reported
        again = statekit(root, "verify")
        failures += cli_problems(again, (0, 1))
        second.append(again)
    record(f"corpus-cli-{fmt}", {
        "damaged_episodes": len(damaged), "cli_runs": len(first) + len(second),
        "show_exit_2": sum(r.code == 2 for r in shows),
        "show_exit_0": sum(r.code == 0 for r in shows), "verify_exit": verify.code,
        "sync_exit": second[0].code if second else None,
        "api_flagged": len(flagged), "failures": len(failures), "tier": "full" if STRESS else "fast",
    })
    assert not failures, "\n".join(failures[:40])


def test_the_cli_reports_a_damaged_statekit_yaml_in_one_line(templates: dict[str, Template], tmp_path: Path) -> None:
    """``statekit.yaml`` damaged: every command is refused on one line (exit 2), or works."""
    cases = _sample([c for fmt in ("yaml", "json") for c in generate(templates[fmt].originals, fmt, full=STRESS)
                     if c.target == "config"], size(2, 40), seed=7)
    jobs = []
    for i, case in enumerate(cases):
        tpl = templates[("yaml", "json")[i % 2]]
        root = tmp_path / f"s{i}"
        shutil.copytree(tpl.root, root, symlinks=True)
        (tmp_path / f"outside{i}").mkdir()
        plant(root / "statekit.yaml", case.mutate(tpl.originals["config"]), tpl.originals["config"],
              tmp_path / f"outside{i}")
        try:
            Store.open(root).close()
            opens = True
        except StatekitError:
            opens = False
        jobs.append((case, root, opens, ("list", "verify", "show")[i % 3]))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: statekit(job[1], *((job[3], "s/target") if job[3] == "show"
                                                               else (job[3],))), jobs))
    failures = []
    for (case, _root, opens, _cmd), result in zip(jobs, results):
        failures += [f"{p} ({case.label})" for p in cli_problems(result, (0, 1, 2))]
        if (result.code == 2) == opens:
            failures.append(f"{case.label}: exit {result.code}, but Store.open {'opens' if opens else 'refuses'} it")
    record("corpus-cli-config", {"inputs": len(cases), "exit_2": sum(r.code == 2 for r in results),
                                 "exit_0_or_1": sum(r.code in (0, 1) for r in results), "failures": len(failures)})
    assert not failures, "\n".join(failures)


# --- regression tests: one for each bug the corpus found ------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Store:
    store = Store.init(tmp_path / "store")
    build_history(store, SHOW, EP)
    store.create(SHOW, "other", title="other")
    return store


@pytest.mark.parametrize("kind", ["fifo", "socket"])
@pytest.mark.parametrize("target", ["episode", "events", "checkpoint", "config"])
def test_regression_a_fifo_socket_or_device_where_a_file_should_be_is_refused_at_once(
        small: Store, tmp_path: Path, kind: str, target: str) -> None:
    """A FIFO in place of episode.yaml made ``get`` block forever in open();
    a socket gave a misleading StorageError ('fix the disk space')."""
    root = Path(small.root)
    path = target_paths(root, "yaml")[target]
    plant(path, NotAFile(kind), path.read_bytes(), tmp_path)
    read: dict[str, Callable[[], Any]] = {
        "episode": lambda: small.get(SHOW, EP), "events": lambda: small.events(SHOW, EP),
        "checkpoint": lambda: small.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE), "config": lambda: Store.open(root)}
    with deadline(10):
        if target == "episode":  # a ledger store reads the committed version from the log, and says why
            pending = small.get(SHOW, EP).pending
            assert pending is not None and "not a regular file" in pending["error"]
            read[target] = lambda: small.advance(SHOW, EP, "downloaded")
        with pytest.raises(CorruptFileError, match="not a regular file"):
            read[target]()
        if target != "config":
            assert not small.verify().clean
            small.sync()
            small.repair()


def test_regression_one_unreadable_episode_does_not_stop_verify_sync_rebuild_or_repair(small: Store) -> None:
    """A directory (or a symlink, a FIFO) in place of one episode file made
    verify, sync, rebuild_index and repair raise for the whole store."""
    path = target_paths(Path(small.root), "yaml")[ "episode"]
    path.unlink()
    path.mkdir()
    assert any(p.episode == f"{SHOW}/{EP}" for p in small.verify().problems)
    assert [p.episode for p in small.sync().rejected] == [f"{SHOW}/{EP}"]
    assert [p.episode for p in small.rebuild_index().problems] == [f"{SHOW}/{EP}"]
    assert any("is a directory" in p for p in small.repair().problems)
    # the healthy one is still indexed; the other as the committed version its log rebuilds, marked
    listed = {e.episode_id: e.pending for e in small.list()}
    assert listed["other"] is None and listed[EP] is not None and listed[EP]["fields"] is None, listed


DAMAGED_LINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "nan-cost": lambda e: json.dumps({**e, "cost": "X"}).replace('"X"', "NaN"),
    "infinity-version": lambda e: json.dumps({**e, "cost": "X"}).replace('"X"', "Infinity"),
    "overflowing-cost": lambda e: json.dumps({**e, "cost": "X"}).replace('"X"', "1e999"),
    "bom": lambda e: "\ufeff" + json.dumps(e),
    "message-is-a-list": lambda e: json.dumps({**e, "message": [1, 2]}),
    "at-is-empty": lambda e: json.dumps({**e, "at": ""}),
    "at-is-not-a-time": lambda e: json.dumps({**e, "at": "3"}),
    "month-13": lambda e: json.dumps({**e, "at": e["at"].replace("-", "-13-", 1)[:5] + "13" + e["at"][7:]}),
    "sha256-is-a-number": lambda e: json.dumps({**e, "sha256": 3.0}),
    "schema-1.5": lambda e: json.dumps({**e, "schema_version": 1.5}),
    "names-another-episode": lambda e: json.dumps({**e, "episode_id": "other"}),
}


@pytest.mark.parametrize("damage", [*DAMAGED_LINES, "repeated-line", "huge-int"])
def test_regression_a_damaged_event_line_is_reported_alike_by_events_verify_sync_rebuild_and_repair(
        small: Store, damage: str) -> None:
    """Before the fix: NaN, Infinity, 1e999 or a BOM passed events() and verify
    but made rebuild_index drop the episode; a list or a bad time crashed
    rebuild_index/sync with sqlite's ProgrammingError or ValueError; a repeated
    line crashed repair with IntegrityError; a wrong-typed field passed verify
    but not events(); a line naming another episode was indexed as that episode's."""
    log = target_paths(Path(small.root), "yaml")["events"]
    lines = log.read_bytes().decode().splitlines()
    if damage == "repeated-line":
        lines.insert(4, lines[3])
    elif damage == "huge-int":
        lines[3] = lines[3].replace('"version":4', '"version":4,"n":' + "9" * 30)
    else:
        lines[3] = DAMAGED_LINES[damage](json.loads(lines[3]))
    log.write_text("\n".join(lines) + "\n")
    other_events = [e.model_dump() for e in small.events(SHOW, "other")]
    verify = small.verify()
    assert any(p.episode == f"{SHOW}/{EP}" and p.kind == "events" for p in verify.problems), verify.problems
    # still readable: a line naming another episode (it is this log's line), and a time of "3"
    # (pydantic reads it as a Unix time; only the index needs ISO text, so verify reports it)
    if damage not in ("names-another-episode", "at-is-not-a-time"):
        with pytest.raises(StatekitError):
            small.events(SHOW, EP)
    small.sync()
    small.rebuild_index()
    report = small.repair()
    assert any("events.jsonl" in p for p in report.problems), report.problems  # left for a person, and said so
    assert [e.model_dump() for e in small.events(SHOW, "other")] == other_events
    indexed = small.sql(f"SELECT version FROM events WHERE show_id = '{SHOW}' AND episode_id = 'other'")[1]
    assert [v for (v,) in indexed] == [e["version"] for e in other_events]  # nothing filed under the other episode


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_regression_integers_beyond_64_bits_are_refused_on_read_and_on_input(tmp_path: Path, fmt: str) -> None:
    """A 31-digit integer in metadata was read, then advance made its write
    durable and raised an uncaught TypeError from the index update."""
    store = Store.init(tmp_path / "store", format=fmt)
    store.create(SHOW, EP, metadata={"n": 3})
    path = target_paths(Path(store.root), fmt)["episode"]
    text = path.read_text()
    path.write_text(text.replace('"n": 3', '"n": 1' + "0" * 30) if fmt == "json" else
                    text.replace("n: 3", "n: 1" + "0" * 30))
    assert path.read_text() != text
    pending = store.get(SHOW, EP).pending  # the committed version, and why the file cannot be read
    assert pending is not None and "64 bits" in pending["error"]
    before = path.read_bytes()
    with pytest.raises(CorruptFileError):
        store.advance(SHOW, EP, "downloading")
    assert path.read_bytes() == before
    store.create(SHOW, "fresh")
    with pytest.raises(ValidationError, match="64 bits"):
        store.update(SHOW, "fresh", metadata={"n": 10**30})
    assert store.get(SHOW, "fresh").version == 1


@pytest.mark.parametrize("ledger", [True, False])
def test_regression_verify_never_lists_every_version_of_a_huge_version_number(tmp_path: Path, ledger: bool) -> None:
    """verify built ``list(range(1, version + 1))``: a hand-edited version of
    10**12 asked for terabytes (and 10**30 raised OverflowError). (A ledger store
    checks the committed version, and reports the file as a pending edit.)"""
    small = Store.init(tmp_path / "store", ledger=ledger)
    build_history(small, SHOW, EP)
    path = target_paths(Path(small.root), "yaml")["episode"]
    path.write_text(path.read_text().replace("version: 8\n", f"version: {10**12}\n"))
    with deadline(20):
        report = small.verify()
    expected = "changed outside statekit since version 8" if ledger else f"missing 9-{10**12}"
    assert any(expected in p.message for p in report.problems), report.problems


def test_regression_an_index_failure_after_a_durable_write_is_logged_not_raised(
        small: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The write is durable before the index is touched; an index error of
    any kind is the index's problem ('statekit sync' repairs it), as the
    write path documents, not an exception for a caller whose write stood."""
    def broken(**_changes: Any) -> None:
        raise TypeError("Integer exceeds 64-bit range")

    monkeypatch.setattr(small.index, "write", broken)
    moved = small.advance(SHOW, EP, "downloaded")
    assert small.get(SHOW, EP) == moved and "statekit sync" in caplog.text
    monkeypatch.undo()
    small.sync()
    assert small.verify().clean
