"""Model-based test of the whole store (issue 5).

A hypothesis ``RuleBasedStateMachine`` drives a real store on disk with
every operation a pipeline, a person and a failing machine can perform:
create, advance (legal and illegal, with and without ``expected_version``),
update, hand edits of the YAML/JSON files (valid, invalid, illegal stage
moves; in place or by rename), damage (truncation, garbage), writes killed
with SIGKILL at a chosen system call in a forked child, leased runs whose
worker is killed mid-run and then recovered once the (injected) clock has
passed the lease, sync, rebuild_index, restore from a backup, and repair.

Beside it runs a plain in-memory model of the store: per episode the file's
state (stage, version, title, metadata, costs, attempts, lease, errors), the
state statekit last committed, the event kinds, the backups the file left
behind; and the index's copy of each episode. The pipeline's rules come
from ``statekit.pipeline`` (the ``archive`` preset of DESIGN.md).

After every step the store must agree with the model: every readable
episode equals it, a damaged one is refused; the event log holds versions
1..version, of the kinds the model recorded; ``list()``/``counts()`` agree
with the model's index; ``verify()`` reports exactly the damage, unadopted
edits and index drift the model knows of, and nothing else. A killed write
may have happened or not: the model keeps both and the next observation
must find exactly one of them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from statekit import (
    CorruptFileError,
    EpisodeExistsError,
    EpisodeNotFoundError,
    InvalidTransitionError,
    NotReadyError,
    ShowNotFoundError,
    Store,
    ValidationError,
    VersionConflictError,
    eventlog,
)
from statekit.models import Episode, cost_sum

from .conftest import size
from .model_helpers import COMMENT, Clock, KillDisk, damage, in_child, set_top_level, write_like_an_editor

SHOWS = ("s", "t")
EPS = ("e0", "e1", "e2")
TITLES = ("alpha", "bravo", "charl", "delta", "")
METADATA = ({}, {"lang": "en"}, {"lang": "fr", "n": 2})
COSTS = (None, 0.25, 0.5, 1.125)
LEASE = 30.0
KEEP = 3  # backups per episode (the store's default)
DAMAGED = (CorruptFileError, ValidationError)
MISSING = (EpisodeNotFoundError, ShowNotFoundError)

FIGURES: Counter[str] = Counter()


# --- the model -------------------------------------------------------------------------


def project(ep: Episode) -> dict[str, Any]:
    """What the model tracks of an episode (everything that statekit decides)."""
    return {
        "title": ep.title, "stage": ep.stage, "previous_stage": ep.previous_stage, "version": ep.version,
        "metadata": ep.metadata, "costs": ep.costs, "cost_total": ep.cost_total, "attempts": ep.attempts,
        "lease": (ep.lease.owner, ep.lease.expires_at) if ep.lease is not None else None,
        "due_at": ep.due_at, "hold": ep.hold is not None,
        "errors": [(e.stage, e.kind, e.action) for e in ep.error_history],
        "created_at": ep.created_at, "updated_at": ep.updated_at,
    }


def public(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("_")}


class Ep:
    """The model of one episode."""

    def __init__(self, show: str, ep: str) -> None:
        self.show, self.ep = show, ep
        self.exists = False
        self.file: dict[str, Any] | None = None
        """The file's state when it can be read; None when damaged (or absent)."""
        self.committed: dict[str, Any] | None = None
        """The state statekit last committed (the event log's last version)."""
        self.kinds: list[tuple[str, str | None]] = []
        """(kind, to_stage) of each committed event, version 1 first."""
        self.tail: tuple[str, str | None] | None = None
        """An uncommitted event after ``committed``'s version (a write killed after its append)."""
        self.replaced: dict[int, dict[str, Any]] = {}
        """The backups: the file's content at version v when a write replaced it."""
        self.maybe: set[int] = set()
        """Backups a killed write may or may not have left (linked before its rename)."""
        self.shared: tuple[int, dict[str, Any] | None] | None = None
        """Such a link while it is still the live file itself (same inode): its version, and the
        content the two share (None once damaged in place). statekit must not list it."""
        self.rotated: list[tuple[int, dict[str, Any]]] = []
        """The backups the last write's rotation removed (a write killed after its rename may not have)."""
        self.junk: set[int] = set()
        """Such links that became files of their own after damage in place: they may exist, damaged."""
        self.written: bytes | None = None
        """The bytes statekit last wrote to the file, as a person's first edit since found them."""
        self.differs = False
        """A person wrote the file since statekit last did, and its bytes are not those."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.show, self.ep)

    @property
    def damaged(self) -> bool:
        return self.exists and self.file is None

    @property
    def edited(self) -> bool:
        """A readable file that is not what statekit committed (a hand edit not adopted). The
        one rule (DESIGN.md): by its bytes, not its data: an edit changed back by a second one
        is still an edit unless the bytes are statekit's again (YAML's quoting, say, differs)."""
        return self.file is not None and (self.file != self.committed or self.differs)

    def clone(self) -> Ep:
        return copy.deepcopy(self)


class StoreMachine(RuleBasedStateMachine):
    """The store against its model."""

    def __init__(self) -> None:
        super().__init__()
        FIGURES["examples"] += 1
        self.tmp = tempfile.mkdtemp(prefix="statekit-model-")
        self.clock = Clock()
        self.store: Store | None = None
        self.eps: dict[tuple[str, str], Ep] = {}
        self.index: dict[tuple[str, str], dict[str, Any]] = {}
        """What the index holds of each episode (list() returns it)."""
        self.stale: set[tuple[str, str]] = set()
        """Episodes whose index row a killed write may have left behind the file (until the next sync)."""
        self.pending: dict[tuple[str, str], tuple[Ep | None, list[Ep | None], bool]] = {}
        """A killed write's episode before it, its possible outcomes (None: the episode does not
        exist), and whether its index update may be missing; the next observation picks the one
        the disk holds."""
        self.workers = 0
        self.dead_rows: dict[tuple[str, str], float] = {}
        """When (``time.monotonic()``) a killed run's lease row is surely expired, per episode."""

    # --- helpers ---------------------------------------------------------------------

    @property
    def s(self) -> Store:
        assert self.store is not None
        return self.store

    @property
    def pipeline(self) -> Any:
        return self.s.pipeline

    def step(self, name: str) -> None:
        FIGURES["steps"] += 1
        FIGURES["rule:" + name] += 1
        self.clock.tick()

    def suffix(self) -> str:
        return "." + self.s.config.format

    def path(self, key: tuple[str, str]) -> str:
        return os.path.join(self.s.root, "shows", key[0], "episodes", key[1], "episode" + self.suffix())

    def log_path(self, key: tuple[str, str]) -> str:
        return os.path.join(self.s.root, "shows", key[0], "episodes", key[1], "events.jsonl")

    def existing(self) -> list[tuple[str, str]]:
        return sorted(k for k, e in self.eps.items() if e.exists)

    def readable(self) -> list[tuple[str, str]]:
        return sorted(k for k, e in self.eps.items() if e.file is not None)

    def live_lease(self, state: dict[str, Any]) -> bool:
        return state["lease"] is not None and self.clock.now < state["lease"][1]

    def keep_backup(self, e: Ep, replaced: dict[str, Any]) -> None:
        """The file at version v is replaced: it becomes backup v, and the
        rotation drops what falls out (by name: v - KEEP; every 16th version
        by listing the folder)."""
        v = replaced["version"]
        e.replaced[v] = replaced
        e.maybe.discard(v)
        e.junk.discard(v)
        if e.shared is not None and e.shared[0] == v:  # the write linked it afresh
            e.shared = None
        gone = [v - KEEP] if v % 16 and v > KEEP else [] if v % 16 else sorted(
            set(e.replaced) | e.junk, reverse=True)[KEEP:]
        e.rotated = [(old, e.replaced[old]) for old in gone if old in e.replaced]
        for old in gone:
            e.replaced.pop(old, None)
            e.maybe.discard(old)
            e.junk.discard(old)

    def unshare(self, e: Ep) -> None:
        """The live file's name now points to a new file: a killed write's link to the old
        one is a file of its own, holding what the two shared."""
        if e.shared is not None:
            v, content = e.shared
            if content is not None:
                e.replaced[v] = content
            else:
                e.replaced.pop(v, None)
                e.maybe.discard(v)
                e.junk.add(v)
            e.shared = None

    def committed_write(self, e: Ep, new: dict[str, Any], event: tuple[str, str | None],
                        restored_over_damage: bool = False) -> None:
        """statekit wrote ``new`` through its one write path: the event, then the file."""
        if e.file is not None:
            self.keep_backup(e, e.file)
            e.tail = None  # the write dropped the uncommitted tail
        else:
            if e.shared is not None:  # the restore removed the killed write's link to the live file
                e.replaced.pop(e.shared[0], None)
                e.maybe.discard(e.shared[0])
                e.shared = None
            if restored_over_damage and e.tail is not None:  # the log's last version counts: the tail stays
                e.kinds.append(e.tail)
                e.tail = None
        e.kinds = e.kinds[: new["version"] - 1] + [event]
        assert len(e.kinds) == new["version"], (e.kinds, new["version"])
        e.file = new
        e.committed = new
        e.exists = True
        e.written, e.differs = None, False

    def base_write(self, state: dict[str, Any], **changes: Any) -> dict[str, Any]:
        return {**copy.deepcopy(state), **changes, "version": state["version"] + 1, "updated_at": self.clock.now}

    def advanced(self, state: dict[str, Any], target: str, cost: float | None) -> dict[str, Any]:
        costs = dict(state["costs"])
        if cost is not None:
            costs[state["stage"]] = round(costs.get(state["stage"], 0.0) + cost, 9)
        attempts = {**state["attempts"], target: state["attempts"].get(target, 0) + 1}
        return self.base_write(state, stage=target, previous_stage=state["stage"], costs=costs,
                               cost_total=cost_sum(costs), attempts=attempts, lease=None, due_at=None, hold=False)

    def created(self, title: str, metadata: dict[str, Any]) -> dict[str, Any]:
        initial = self.pipeline.initial
        now = self.clock.now
        return {"title": title, "stage": initial, "previous_stage": None, "version": 1, "metadata": metadata,
                "costs": {}, "cost_total": 0.0, "attempts": {initial: 1}, "lease": None, "due_at": None,
                "hold": False, "errors": [], "created_at": now, "updated_at": now, "_comment": False}

    def expect(self, errors: type[BaseException] | tuple[type[BaseException], ...] | None, call: Any) -> Any:
        """Run ``call``; it must raise one of ``errors`` (None: must succeed)."""
        if errors is None:
            return call()
        with pytest.raises(errors):
            call()
        FIGURES["refused as the model expected"] += 1
        return None

    # --- rules -----------------------------------------------------------------------

    @initialize(fmt=st.sampled_from(["yaml", "json"]),
                first=st.lists(st.sampled_from([(s, e) for s in SHOWS for e in EPS]), min_size=1, max_size=4,
                               unique=True))
    def init_store(self, fmt: str, first: list[tuple[str, str]]) -> None:
        """A new store with a few episodes (every rule has something to work on from the start)."""
        # a store at the format before the ledger: its rules (reads take the file as it is, refuse
        # a damaged one; repair restores backups). The ledger's: tests/test_ledger_model.py
        self.store = Store.init(os.path.join(self.tmp, "store"), format=fmt, clock=self.clock, ledger=False)
        FIGURES["format:" + fmt] += 1
        for show, ep in first:
            self.create(show, ep, TITLES[len(self.eps) % len(TITLES)], {})

    @rule(show=st.sampled_from(SHOWS), ep=st.sampled_from(EPS), title=st.sampled_from(TITLES),
          metadata=st.sampled_from(METADATA))
    def create(self, show: str, ep: str, title: str, metadata: dict[str, Any]) -> None:
        self.step("create")
        key = (show, ep)
        e = self.eps.get(key)
        if e is not None and e.exists:
            self.expect(EpisodeExistsError, lambda: self.s.create(show, ep, title=title, metadata=metadata))
            return
        e = self.eps[key] = Ep(show, ep)
        new = self.created(title, metadata)
        got = self.s.create(show, ep, title=title, metadata=metadata)
        assert public(project(got)) == public(new)
        self.committed_write(e, new, ("create", self.pipeline.initial))
        self.index[key] = new

    @precondition(lambda self: self.existing())
    @rule(data=st.data(), legal=st.booleans(), cost=st.sampled_from(COSTS),
          check=st.sampled_from(["none", "current", "stale"]))
    def advance(self, data: st.DataObject, legal: bool, cost: float | None, check: str) -> None:
        self.step("advance")
        key = data.draw(st.sampled_from(self.existing()), label="episode")
        e = self.eps[key]
        stages = list(self.pipeline.stages)
        nexts = list(self.pipeline.next_stages(e.file["stage"])) if e.file is not None else []
        target = data.draw(st.sampled_from(nexts if legal and nexts else stages), label="target")
        version = e.file["version"] if e.file is not None else e.committed["version"]
        expected = {"none": None, "current": version, "stale": max(0, version - 1)}[check]
        if check == "stale" and expected == version:
            expected = version + 1

        def call() -> Episode:
            return self.s.advance(key[0], key[1], target, cost=cost, expected_version=expected,
                                  message="model")

        if e.file is None:
            self.expect(DAMAGED, call)
        elif expected is not None and expected != e.file["version"]:
            self.expect(VersionConflictError, call)
        elif target not in self.pipeline.next_stages(e.file["stage"]):
            self.expect(InvalidTransitionError, call)
        elif self.live_lease(e.file):
            self.expect(NotReadyError, call)
        else:
            new = self.advanced(e.file, target, cost)
            got = call()
            assert public(project(got)) == public(new)
            self.committed_write(e, new, ("advance", target))
            self.index[key] = new
            FIGURES["legal moves"] += 1

    @precondition(lambda self: self.existing())
    @rule(data=st.data(), title=st.sampled_from((None, *TITLES)), metadata=st.sampled_from((None, *METADATA)),
          check=st.sampled_from(["none", "current", "stale"]))
    def update(self, data: st.DataObject, title: str | None, metadata: dict[str, Any] | None, check: str) -> None:
        self.step("update")
        key = data.draw(st.sampled_from(self.existing()), label="episode")
        e = self.eps[key]
        given: dict[str, Any] = {}
        if title is not None:
            given["title"] = title
        if metadata is not None or not given:
            given["metadata"] = metadata if metadata is not None else {}
        version = e.file["version"] if e.file is not None else e.committed["version"]
        expected = {"none": None, "current": version, "stale": version + 1}[check]

        def call() -> Episode:
            return self.s.update(key[0], key[1], expected_version=expected, **given)

        if e.file is None:
            self.expect(DAMAGED, call)
        elif expected is not None and expected != e.file["version"]:
            self.expect(VersionConflictError, call)
        elif all(e.file[k] == v for k, v in given.items()):
            got = call()  # nothing changes: nothing is written
            assert public(project(got)) == public(e.file)
        else:
            new = self.base_write(e.file, **copy.deepcopy(given))
            got = call()
            assert public(project(got)) == public(new)
            self.committed_write(e, new, ("update", None))
            self.index[key] = new

    @precondition(lambda self: self.readable())
    @rule(data=st.data(), what=st.sampled_from(["title", "stage-legal", "stage-illegal", "bad-stage-name",
                                                 "bad-cost-total", "bad-attempts"]),
          in_place=st.booleans(), comment=st.booleans(), then_sync=st.booleans())
    def hand_edit(self, data: st.DataObject, what: str, in_place: bool, comment: bool, then_sync: bool) -> None:
        """A person edits the episode file in an editor (then, often, runs sync)."""
        self.step("hand_edit")
        key = data.draw(st.sampled_from(self.readable()), label="episode")
        e = self.eps[key]
        assert e.file is not None and e.committed is not None
        path = self.path(key)
        with open(path, "rb") as f:
            raw = f.read()
        comment = comment and self.suffix() == ".yaml"
        new = copy.deepcopy(e.file)
        if comment:
            new["_comment"] = True
        if what == "title":
            value: Any = data.draw(st.sampled_from([t for t in TITLES if t != e.file["title"]]), label="title")
            new["title"] = value
            field = "title"
        elif what.startswith("stage"):
            base = self.logged_stage(e)
            legal = [s for s in self.pipeline.next_stages(base) if s != e.file["stage"]]
            illegal = [s for s in self.pipeline.stages
                       if s not in self.pipeline.next_stages(base) and s not in (base, e.file["stage"])]
            options = legal if what == "stage-legal" else illegal
            if not options:
                return
            value = data.draw(st.sampled_from(options), label="stage")
            new["stage"] = value
            field = "stage"
        elif what == "bad-stage-name":
            field, value, new = "stage", "Not A Stage!", None
        elif what == "bad-cost-total":
            field, value, new = "cost_total", e.file["cost_total"] + 7.5, None
        else:
            field, value, new = "attempts", "many", None
        write_like_an_editor(path, set_top_level(raw, self.suffix(), field, value, comment=comment), in_place)
        FIGURES["hand edits: " + what] += 1
        self.edited(e, new, in_place, raw)
        if then_sync:
            self.do_sync()

    @staticmethod
    def logged_stage(e: Ep) -> str:
        """The stage the log last recorded a move to: what sync checks an edit's move from.
        (A write over a hand edit that sync refused commits the edited stage without a
        move in the log: sync goes on judging moves from the log's stage.)"""
        return next(to for _kind, to in reversed(e.kinds) if to is not None)

    def edited(self, e: Ep, new: dict[str, Any] | None, in_place: bool, raw: bytes) -> None:
        """The file now holds ``new`` (None: damaged), written in place or by rename over
        ``raw``. A link a killed write left to it changes with it in place (statekit must not
        take it for a backup), or keeps the old content when the name moves on."""
        if e.written is None:  # the first edit since statekit wrote the file: those are its bytes
            e.written = raw
        with open(self.path(e.key), "rb") as f:
            e.differs = f.read() != e.written
        if e.shared is not None:
            if in_place:
                e.shared = (e.shared[0], copy.deepcopy(new))
                e.replaced.pop(e.shared[0], None)
                e.maybe.discard(e.shared[0])
            else:
                self.unshare(e)
        e.file = new

    @precondition(lambda self: self.existing())
    @rule(data=st.data(), how=st.sampled_from(["truncate", "garbage", "zeros", "torn-log"]), in_place=st.booleans())
    def corrupt(self, data: st.DataObject, how: str, in_place: bool) -> None:
        """A failing disk or a bad copy damages a file."""
        self.step("corrupt")
        key = data.draw(st.sampled_from(self.existing()), label="episode")
        e = self.eps[key]
        if how == "torn-log":  # half an event line at the end: an append that never finished
            with open(self.log_path(key), "ab") as f:
                f.write(b'{"version": 99, "kind": "adv')
            FIGURES["damage: torn log tail"] += 1
            return
        if e.file is None:
            return
        path = self.path(key)
        with open(path, "rb") as f:
            raw = f.read()
        write_like_an_editor(path, damage(raw, how), in_place)
        FIGURES["damage: " + how] += 1
        self.edited(e, None, in_place, raw)

    @precondition(lambda self: self.existing() or len(self.eps) < len(SHOWS) * len(EPS))
    @rule(data=st.data(), op=st.sampled_from(["advance", "update", "create"]),
          kill_at=st.one_of(st.none(), st.integers(0, 30)))
    def crash(self, data: st.DataObject, op: str, kill_at: int | None) -> None:
        """A write in a forked process that SIGKILLs itself before the
        ``kill_at``-th system call of its write."""
        self.step("crash")
        if op == "create":
            free = [(s, p) for s in SHOWS for p in EPS if not (self.eps.get((s, p)) and self.eps[(s, p)].exists)]
            if not free:
                return
            key = data.draw(st.sampled_from(free), label="episode")
            title = data.draw(st.sampled_from(TITLES), label="title")
            new_ep = Ep(*key)
            state = self.created(title, {})
            self.committed_write(new_ep, state, ("create", self.pipeline.initial))
            old: Ep | None = self.eps.get(key)
            if old is not None and old.exists:
                old = None

            def work(store: Store) -> None:
                store.create(key[0], key[1], title=title)
        else:
            keys = [k for k in self.readable() if not self.live_lease(self.eps[k].file)]  # type: ignore[arg-type]
            if not keys:
                return
            key = data.draw(st.sampled_from(keys), label="episode")
            old = self.eps[key]
            assert old.file is not None
            new_ep = old.clone()
            if op == "advance":
                nexts = list(self.pipeline.next_stages(old.file["stage"]))
                if not nexts:
                    return
                target = data.draw(st.sampled_from(nexts), label="target")
                cost = data.draw(st.sampled_from(COSTS), label="cost")
                self.committed_write(new_ep, self.advanced(old.file, target, cost), ("advance", target))

                def work(store: Store) -> None:
                    store.advance(key[0], key[1], target, cost=cost)
            else:
                title = data.draw(st.sampled_from([t for t in TITLES if t != old.file["title"]]), label="title")
                self.committed_write(new_ep, self.base_write(old.file, title=title), ("update", None))

                def work(store: Store) -> None:
                    store.update(key[0], key[1], title=title)

        root, now = self.s.root, self.clock.now

        def child() -> None:
            clock = Clock()
            clock.now = now
            work(Store.open(root, disk=KillDisk(kill_at), clock=clock))

        status = in_child(child)
        assert status in ("ok", "killed"), status
        FIGURES[f"crash: {op} {status}"] += 1
        if status == "ok":
            self.eps[key] = new_ep
            self.index[key] = copy.deepcopy(new_ep.file)  # type: ignore[arg-type]
        else:
            self.pending[key] = (old, [old.clone() if old is not None else None, new_ep], True)

    @precondition(lambda self: self.readable())
    @rule(data=st.data(), with_cost=st.booleans(), kill_at=st.one_of(st.none(), st.integers(0, 40)))
    def killed_run(self, data: st.DataObject, with_cost: bool, kill_at: int | None) -> None:
        """A worker in a forked process starts a leased run and is killed
        mid-run (or at a system call of its writes), holding the lease."""
        self.step("killed_run")
        runs = self.pipeline.runs
        options = []
        for key in self.readable():
            f = self.eps[key].file
            assert f is not None
            if f["lease"] is not None or f["hold"] or (f["due_at"] is not None and self.clock.now < f["due_at"]):
                continue
            if time.monotonic() < self.dead_rows.get(key, 0.0):
                # a killed worker's lease row in the index (taken before its first file write) holds
                # the episode until it expires by the database's clock, real seconds (issue 15)
                continue
            for stage in runs:
                if stage == f["stage"] or stage in self.pipeline.next_stages(f["stage"]):
                    options.append((key, stage))
        if not options:
            return
        key, stage = data.draw(st.sampled_from(options), label="run")
        old = self.eps[key]
        f = old.file
        assert f is not None
        self.workers += 1
        owner = f"worker-{self.workers}"
        now = self.clock.now
        moved = stage != f["stage"]
        started = self.base_write(f, lease=(owner, now + _seconds(LEASE)), due_at=None, hold=False)
        if moved:
            started.update(stage=stage, previous_stage=f["stage"],
                           attempts={**f["attempts"], stage: f["attempts"].get(stage, 0) + 1})
        first = old.clone()
        self.committed_write(first, started, ("start", stage if moved else None))
        outcomes: list[Ep | None] = [old.clone(), first]
        if with_cost:
            costs = {**started["costs"], stage: round(started["costs"].get(stage, 0.0) + 0.5, 9)}
            second = first.clone()
            self.committed_write(second, self.base_write(started, costs=costs, cost_total=cost_sum(costs)),
                                 ("cost", None))
            outcomes.append(second)
        root = self.s.root

        def child() -> None:
            clock = Clock()
            clock.now = now
            store = Store.open(root, disk=KillDisk(kill_at), clock=clock)
            with store.run(key[0], key[1], stage, owner=owner, lease_seconds=LEASE) as run:
                if with_cost:
                    run.cost(0.5)
                os.kill(os.getpid(), 9)  # mid-run: the worker dies holding its lease

        status = in_child(child)
        assert status == "killed", status
        self.dead_rows[key] = time.monotonic() + LEASE + 1
        FIGURES["killed runs"] += 1
        if kill_at is None:  # killed in the body, after its writes: only the last outcome
            outcomes = outcomes[-1:]
        self.pending[key] = (old.clone(), outcomes, True)

    @rule(past_leases=st.booleans())
    def recover(self, past_leases: bool) -> None:
        """Time passes (past every lease, or not), then ``recover()``."""
        self.step("recover")
        if past_leases:
            self.clock.tick(LEASE + 1)
        expired = sorted(k for k, row in self.index.items()
                         if row["lease"] is not None and self.clock.now >= row["lease"][1])
        report = self.s.recover()
        self.model_sync(report.synced)
        now = self.clock.now
        recovered, refused = [], []
        for key in sorted(expired):
            e = self.eps[key]
            if e.file is None or e.file["lease"] is None or now < e.file["lease"][1]:
                continue
            f = e.file
            stage = f["stage"]
            failure = self.pipeline.failure_stage
            if failure not in self.pipeline.next_stages(stage):
                # a hand edit (which sync refused) left a stage the run cannot fail from: recovery
                # refuses to write an illegal move and reports the episode; it stays as it is
                refused.append(f"{key[0]}/{key[1]}")
                FIGURES["recover refused: illegal stage"] += 1
                continue
            used = f["attempts"].get(stage, 0)
            action = "retry" if used < self.pipeline.attempts_allowed(stage) else "give_up"
            new = self.base_write(f, stage=failure, previous_stage=stage, lease=None,
                                  attempts={**f["attempts"], failure: f["attempts"].get(failure, 0) + 1},
                                  errors=[*f["errors"], (stage, "interrupted", action)],
                                  due_at=now if action == "retry" else None, hold=action != "retry")
            self.committed_write(e, new, ("recovered", failure))
            if action == "give_up":
                give_up = self.pipeline.give_up_stage
                new = self.base_write(new, stage=give_up, previous_stage=failure, hold=False, due_at=None,
                                      attempts={**new["attempts"], give_up: new["attempts"].get(give_up, 0) + 1})
                self.committed_write(e, new, ("give_up", give_up))
            self.index[key] = e.file  # type: ignore[assignment]
            recovered.append((f"{key[0]}/{key[1]}", action))
            FIGURES["recovered: " + action] += 1
        assert sorted((r["episode"], r["action"]) for r in report.recovered) == recovered, report
        assert sorted(p.split(":")[0] for p in report.problems if "cannot be reached" in p) == refused, report

    @rule()
    def sync(self) -> None:
        self.step("sync")
        self.do_sync()

    def do_sync(self) -> None:
        report = self.s.sync()
        self.model_sync(report)

    def model_sync(self, report: Any) -> None:
        """What sync does to each episode: index the files statekit wrote,
        adopt valid hand edits (version + 1, one ``external_edit`` event),
        reject invalid ones and illegal stage moves (file and index kept)."""
        rejected, changed = [], []
        for key, e in sorted(self.eps.items()):
            name = f"{key[0]}/{key[1]}"
            if not e.exists:
                continue
            if e.file is None:
                rejected.append(name)
                continue
            if not e.edited:
                self.index[key] = e.file
                continue
            assert e.committed is not None
            base, stage = self.logged_stage(e), e.file["stage"]
            if stage != base and stage not in self.pipeline.next_stages(base):
                rejected.append(name)
                continue
            new = self.base_write(e.file)
            # the fields named: those that differ from the index's copy (after a rebuild that
            # indexed the edit as it was, none); unknown if the index lags or lacks the episode
            known = self.index.get(key) if key not in self.stale else None
            fields = None if known is None else sorted(
                k for k in public(e.file) if k not in ("version", "updated_at") and e.file[k] != known[k])
            self.committed_write(e, new, ("external_edit", stage if stage != base else None))
            self.index[key] = new
            changed.append((name, fields))
        # a file sync refuses (damaged, or an illegal hand edit) keeps its index row as it was,
        # which a killed write may have left behind
        self.stale = {k for k in self.stale if self.eps[k].damaged or f"{k[0]}/{k[1]}" in rejected}
        FIGURES["sync adopted edits"] += len(changed)
        FIGURES["sync rejected files"] += len(rejected)
        assert sorted(p.episode for p in report.rejected) == sorted(rejected), report.rejected
        assert sorted(c["episode"] for c in report.changed) == sorted(n for n, _f in changed), report.changed
        named = {c["episode"]: sorted(c["fields"]) for c in report.changed}
        for name, fields in changed:
            if fields is not None:
                assert named[name] == [f for f in fields if f != "cost_total"], (name, named[name], fields)

    @rule()
    def rebuild(self) -> None:
        self.step("rebuild")
        report = self.s.rebuild_index()
        self.index = {k: e.file for k, e in self.eps.items() if e.file is not None}
        self.stale.clear()
        assert sorted(p.episode for p in report.problems) == sorted(
            f"{k[0]}/{k[1]}" for k, e in self.eps.items() if e.damaged)
        assert report.episodes == len(self.index)

    @precondition(lambda self: self.existing())
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        self.step("restore")
        key = data.draw(st.sampled_from(self.existing()), label="episode")
        e = self.eps[key]
        listed = self.check_backups(e)
        if not listed:
            self.expect(ValidationError, lambda: self.s.restore(key[0], key[1]))
            return
        good = [(n, v) for n, v, ok in listed if ok]
        if not good:
            self.expect(CorruptFileError, lambda: self.s.restore(key[0], key[1], 1))
            return
        number, version = data.draw(st.sampled_from(good), label="backup")
        if e.file is not None and self.live_lease(e.file):  # a live run holds it
            self.expect(NotReadyError, lambda: self.s.restore(key[0], key[1], number))
            return
        got = self.s.restore(key[0], key[1], number)
        self.model_restore(e, version)
        assert public(project(got)) == public(e.file)  # type: ignore[arg-type]
        FIGURES["restores"] += 1

    def check_backups(self, e: Ep) -> list[tuple[int, int, bool]]:
        """The backups statekit lists: each one the model knows, newest first,
        every one restorable; the newest certain one is there."""
        listed = self.s.backups(e.show, e.ep)
        versions = [b.version for b in listed]
        assert versions == sorted(versions, reverse=True)
        known = (sorted(e.replaced), e.maybe, e.junk, e.shared)
        assert set(versions) <= set(e.replaced) | e.junk, (versions, known)
        assert set(e.replaced) - e.maybe <= set(versions), (versions, known)
        assert e.shared is None or e.shared[0] not in versions, (versions, known)  # the live file is no backup
        assert all(b.problem is None for b in listed if b.version not in e.junk), [b.problem for b in listed]
        assert all(b.problem is not None for b in listed if b.version in e.junk), [b.problem for b in listed]
        return [(b.number, b.version, b.problem is None) for b in listed]

    def model_restore(self, e: Ep, version: int) -> None:
        source = e.replaced[version]
        logged = e.committed["version"] + (1 if e.tail is not None else 0)  # type: ignore[index]
        base = e.file["version"] if e.file is not None else logged
        new = {**copy.deepcopy(source), "version": base + 1, "updated_at": self.clock.now, "lease": None}
        self.committed_write(e, new, ("restore", new["stage"]), restored_over_damage=e.file is None)
        self.index[e.key] = new

    @rule()
    def repair(self) -> None:
        """``repair``: damaged files get their newest backup back, uncommitted
        tails go, then sync (and a rebuild if the index still drifts)."""
        self.step("repair")
        newest = {}
        for key, e in sorted(self.eps.items()):
            if e.damaged:
                good = [v for _n, v, ok in self.check_backups(e) if ok]
                if good:
                    newest[key] = good[0]
        report = self.s.repair()
        for key, version in newest.items():
            self.model_restore(self.eps[key], version)
        for e in self.eps.values():
            if e.file is not None:  # an episode left unreadable keeps its log as it is
                e.tail = None
        assert report.synced is not None
        self.model_sync(report.synced)
        drift = sum(n for (kind, _ep), n in self.expected_problems().items() if kind == "index")
        rebuilt = any(a.startswith("rebuild the index") for a in report.actions)
        if not self.stale:  # else a killed write's index update may be missing: drift or not
            assert rebuilt == bool(drift), report.actions
        if rebuilt:  # what drift sync leaves (rejected edits): the index is built again from the files
            self.index = {k: e.file for k, e in self.eps.items() if e.file is not None}
            self.stale.clear()
        FIGURES["repairs"] += 1

    # --- observations --------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.store is None:
            return
        self.resolve()
        self.check_files()
        self.check_index()
        self.check_verify()

    def observe(self, key: tuple[str, str]) -> dict[str, Any] | None | str:
        try:
            return public(project(self.s.get(*key)))
        except MISSING:
            return None
        except DAMAGED:
            return "damaged"

    def resolve(self) -> None:
        """A killed write happened or did not: the disk must hold exactly one outcome."""
        for key, (before, outcomes, index_may_lag) in sorted(self.pending.items()):
            seen = self.observe(key)
            matches = [o for o in outcomes if (None if o is None else public(o.file or {})) == seen]
            assert len(matches) == 1, f"{key}: the disk holds {seen}, the model allows {outcomes}"
            chosen = matches[0]
            FIGURES[f"killed writes resolved to outcome {outcomes.index(chosen)} of {len(outcomes)}"] += 1
            logged = eventlog.last_logged_version(self.log_path(key)) if os.path.exists(self.log_path(key)) else 0
            if chosen is None:
                self.eps.pop(key, None)
                self.index.pop(key, None)
                assert logged in (0, 1), logged  # at most the create's uncommitted event
                continue
            assert chosen.file is not None
            v = chosen.file["version"]
            position = outcomes.index(chosen)
            if position + 1 < len(outcomes):
                # the next write was killed before its rename: it may have appended its event
                # (an uncommitted tail) and linked the file as a backup
                nxt = outcomes[position + 1]
                assert nxt is not None
                assert logged in (v, v + 1), (logged, v)
                chosen.tail = nxt.kinds[v] if logged == v + 1 else None
                if v not in chosen.replaced:
                    chosen.replaced[v] = chosen.file
                    chosen.maybe.add(v)
                    chosen.shared = (v, chosen.file)
                if v > KEEP and v - KEEP in chosen.replaced:
                    # and it may have taken the backup its rotation drops as its temp file
                    # (backups.Backups.spare): that one is gone though the write did not commit
                    chosen.maybe.add(v - KEEP)
            else:
                assert logged == v, (logged, v)
            if before is None or chosen.file != before.file:  # killed after its rename: maybe before rotating
                for old, content in chosen.rotated:
                    if old not in chosen.replaced:
                        chosen.replaced[old] = content
                        chosen.maybe.add(old)
            self.eps[key] = chosen
            if before is None or chosen.file != before.file:
                # the index may or may not have the new state: it is checked again after the next sync
                if index_may_lag:
                    self.stale.add(key)
                self.index[key] = chosen.file
        self.pending.clear()

    def check_files(self) -> None:
        for key, e in sorted(self.eps.items()):
            seen = self.observe(key)
            if not e.exists:
                assert seen is None, (key, seen)
                continue
            if e.file is None:
                assert seen == "damaged", (key, seen)
            else:
                assert seen == public(e.file), f"{key}:\n disk  {seen}\n model {public(e.file)}"
                if e.file.get("_comment"):
                    with open(self.path(key), encoding="utf-8") as f:
                        assert COMMENT in f.read(), f"{key}: the person's comment was lost"
            # the log: versions 1..committed, of the kinds recorded; at most the known tail after it
            assert e.committed is not None
            committed = e.committed["version"]
            lines = eventlog.read_events(self.log_path(key), committed)
            assert [line["version"] for line in lines] == list(range(1, committed + 1)), (key, lines)
            assert [(line["kind"], line.get("to_stage")) for line in lines] == e.kinds, (key, lines, e.kinds)
            logged = eventlog.last_logged_version(self.log_path(key))
            assert logged == committed + (1 if e.tail is not None else 0), (key, logged, committed, e.tail)
            if e.file is not None and not e.edited:
                events = self.s.events(*key)
                assert [ev.version for ev in events] == list(range(1, e.file["version"] + 1))

    def check_index(self) -> None:
        listed = {(ep.show_id, ep.episode_id): public(project(ep)) for ep in self.s.list()}
        want = {k: public(v) for k, v in self.index.items()}
        for key in self.stale:
            listed.pop(key, None)
            want.pop(key, None)
        assert listed == want, f"index:\n {listed}\n model {want}"
        if not self.stale:
            counts = self.s.counts()
            expected = Counter(v["stage"] for v in self.index.values())
            assert counts == {stage: expected.get(stage, 0) for stage in self.pipeline.stages}, counts

    def check_verify(self) -> None:
        report = self.s.verify()
        found = Counter((p.kind, p.episode) for p in report.problems)
        expected = self.expected_problems({ep: n for (kind, ep), n in found.items() if kind == "backup" and ep})
        if self.stale:  # a killed write's index update may be missing: drift only where the model allows it
            allowed = {f"{k[0]}/{k[1]}" for k in self.stale} | {None}
            found = Counter({k: n for k, n in found.items() if not (k[0] == "index" and k[1] in allowed)})
        assert found == expected, f"verify found {found}, the model expects {expected}:\n" + "\n".join(
            p.message for p in report.problems)

    def expected_problems(self, found_backups: dict[str, int] | None = None) -> Counter[tuple[str, str | None]]:
        """What verify must report: (kind, episode) -> how many. ``found_backups``: damaged
        backups verify found per episode (allowed where a killed write's link was damaged)."""
        found_backups = found_backups or {}
        expected: Counter[tuple[str, str | None]] = Counter()
        totals_files: Counter[tuple[str, str]] = Counter()
        totals_index: Counter[tuple[str, str]] = Counter()
        for key, e in sorted(self.eps.items()):
            name = f"{key[0]}/{key[1]}"
            if not e.exists:
                continue
            row = self.index.get(key)
            if e.junk:
                found_junk = found_backups.get(name, 0)
                expected[("backup", name)] += found_junk
            if e.file is None:
                expected[("invalid", name)] += 1
                if row is not None:
                    totals_files[(key[0], row["stage"])] += 1
                continue
            totals_files[(key[0], e.file["stage"])] += 1
            if e.edited:
                expected[("edited", name)] += 1
            if key in self.stale:
                continue
            if row is None or public(row) != public(e.file):
                expected[("index", name)] += 1
        for key, row in self.index.items():
            totals_index[(key[0], row["stage"])] += 1
        if not self.stale:
            expected[("index", None)] += sum(
                1 for pair in set(totals_files) | set(totals_index) if totals_files[pair] != totals_index[pair])
        return +expected

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _seconds(n: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=n)


StoreMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", 0)) or size(25, 500), stateful_step_count=size(30, 50), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, *([] if os.environ.get("MODEL_NO_SHRINK") else [Phase.shrink])],
)


def test_store_against_its_model() -> None:
    FIGURES.clear()
    StoreMachine.TestCase("runTest").runTest()
    figures = dict(sorted(FIGURES.items()))
    print("\nmodel-based test figures:\n" + json.dumps(figures, indent=1))
    target = os.environ.get("STATEKIT_FIGURES_DIR")
    if target:
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "model.json"), "w") as f:
            json.dump(figures, f, indent=1)
    assert figures["examples"] >= 1 and figures["steps"] > 0


# --- regression tests: each divergence the model found, as a plain test ------------------------


def _set_line(store: Store, key: tuple[str, str], field: str, value: Any, *, in_place: bool = True) -> None:
    path = os.path.join(store.root, "shows", key[0], "episodes", key[1], "episode." + store.config.format)
    with open(path, "rb") as f:
        raw = f.read()
    write_like_an_editor(path, set_top_level(raw, "." + store.config.format, field, value), in_place)


def test_a_second_hand_edit_of_the_stage_is_checked_from_the_first(tmp_path: Any) -> None:
    """An adopted edit that moved the stage is recorded as a move, so the next
    edit is judged from the stage the file has now (it was judged from the
    stage before the first edit: a legal move was refused, an illegal one let in)."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    _set_line(store, ("s", "e"), "stage", "downloading")
    assert [c["fields"] for c in store.sync().changed] == [["stage"]]
    _set_line(store, ("s", "e"), "stage", "downloaded")  # legal from downloading
    report = store.sync()
    assert report.rejected == [] and [c["fields"] for c in report.changed] == [["stage"]]
    _set_line(store, ("s", "e"), "stage", "published")  # illegal from downloaded (legal from nowhere near)
    assert [p.kind for p in store.sync().rejected] == ["illegal-move"]
    events = store.events("s", "e")
    assert [(e.kind, e.from_stage, e.to_stage) for e in events] == [
        ("create", None, "discovered"), ("external_edit", "discovered", "downloading"),
        ("external_edit", "downloading", "downloaded")]


def test_sync_adopts_an_edit_that_a_rebuild_indexed_as_it_was(tmp_path: Any) -> None:
    """A rebuild indexes a hand-edited file as it is; sync must still adopt
    the edit (verify said "run sync to adopt", and sync never did)."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e", title="alpha")
    _set_line(store, ("s", "e"), "title", "bravo")
    store.rebuild_index()
    assert [p.kind for p in store.verify().problems] == ["edited"]
    report = store.sync()
    assert [c["episode"] for c in report.changed] == ["s/e"]
    assert [e.kind for e in store.events("s", "e")] == ["create", "external_edit"]
    assert store.get("s", "e").version == 2 and store.verify().clean


def test_restoring_an_episode_a_rebuild_dropped_puts_all_its_events_back_in_the_index(tmp_path: Any) -> None:
    """A rebuild drops a damaged episode from the index, events and all; its
    restore must bring the whole log back (verify reported drift until a sync)."""
    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    store.advance("s", "e", "downloading")
    path = os.path.join(store.root, "shows", "s", "episodes", "e", "episode.yaml")
    with open(path, "wb") as f:
        f.write(b"\x00garbage")
    store.rebuild_index()
    restored = store.restore("s", "e")
    assert restored.version == 3 and restored.stage == "discovered"
    assert store.verify().clean, store.verify().problems


def test_adopting_an_edit_puts_back_the_events_a_killed_writer_kept_from_the_index(tmp_path: Any) -> None:
    """A writer killed after its rename, before its index update; then a hand
    edit and a sync: the adoption must also index the killed write's event."""
    from .model_helpers import KillOnCall

    store = Store.init(tmp_path / "s")
    store.create("s", "e")
    for title in ("a", "b", "c"):
        store.update("s", "e", title=title)
    root = store.root
    # killed at the folder's fsync right after the rename (the write's last system call before the
    # index: the rotation no longer unlinks the spare backup the write took as its temp file)
    status = in_child(lambda: Store.open(root, disk=KillOnCall("fsync", after="replace")).advance(
        "s", "e", "downloading"))
    assert status == "killed"
    assert store.get("s", "e").version == 5  # renamed in; the index never heard of it
    assert [e.version for e in store.list()] == [4]
    _set_line(store, ("s", "e"), "title", "by hand")
    report = store.sync()
    assert [c["episode"] for c in report.changed] == ["s/e"]
    assert store.verify().clean, store.verify().problems


def test_a_killed_writes_link_to_the_live_file_is_no_backup(tmp_path: Any) -> None:
    """A writer killed between linking the old file as a backup and renaming
    the new one in leaves a hard link to the live file. Damage to the live
    file in place damaged that "backup" too: verify reported it and repair had
    nothing valid to restore. It is not listed as a backup. (A store before the ledger,
    whose repair restores backups; a ledger store's repair takes the log's version.)"""
    from .model_helpers import KillOnCall

    store = Store.init(tmp_path / "s", ledger=False)
    store.create("s", "e")
    store.update("s", "e", title="one")
    store.update("s", "e", title="two")  # version 3; backups 1 and 2
    root = store.root
    status = in_child(lambda: Store.open(root, disk=KillOnCall("replace")).update("s", "e", title="three"))
    assert status == "killed"
    link = os.path.join(root, ".statekit", "backups", "episodes", "s", "e", "episode.v3.yaml")
    assert os.path.exists(link)  # the kill left it: the live file under another name
    assert [b.version for b in store.backups("s", "e")] == [2, 1]
    path = os.path.join(root, "shows", "s", "episodes", "e", "episode.yaml")
    with open(path, "r+b") as f:  # a failing disk damages the file's blocks (its inode)
        f.write(b"\x00\x00\x00")
    assert [p.kind for p in store.verify().problems] == ["invalid"]
    store.repair()
    ep = store.get("s", "e")
    # backup 2 back, over the log's last version (the killed write's event: the damaged
    # file cannot say it was never committed)
    assert ep.title == "one" and ep.version == 5
    assert store.verify().clean, store.verify().problems
