"""A model-based test of the ledger (issue 14's "done when"): writes, hand edits (valid,
invalid values, unreadable, illegal moves, layout only), crashed writes (a rename that
fails, and real processes killed with SIGKILL at a system call), sync, rebuild, repair
and revert in any order. After every step:

- the one rule: a file is pending exactly when its bytes are not what the log's line
  at the committed version says (judged here from the log and the file, not by statekit);
- replaying the log gives the committed version, and ``history`` every version up to it;
- every path reports that same committed state: ``get``, ``events``, ``list`` and
  ``counts`` (the index's rows), the index's ``pending`` marks once sync or a rebuild has
  looked, and ``verify``, which reports exactly the pending files and nothing else.

A killed write may have committed or not; its index update may be missing until the
next sync, rebuild or repair (the index is a cache), and only there is drift allowed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from statekit import StatekitError, Store
from statekit.eventlog import read_events, replay
from statekit.files import Disk

from .reliability.conftest import size
from .reliability.model_helpers import KillDisk, in_child

EPISODES = ("a", "b")


class RenameFails(Disk):
    """A disk on which renaming an episode file into place fails (EIO)."""

    def replace(self, src: str, dst: str, **kw: Any) -> None:
        if os.path.basename(dst).startswith("episode."):
            raise OSError(errno.EIO, "injected: the rename never happened", dst)
        super().replace(src, dst, **kw)


STAGES = ("discovered", "downloading", "downloaded", "converting", "published", "failed")
FIGURES: Counter[str] = Counter()


class Ledger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="ledger-model-")
        self.store = Store.init(Path(self.tmp, "store"))  # the default: a ledger store
        assert self.store.writer.chained
        for ep in EPISODES:
            self.store.create("s", ep)
        self.looked = True
        """sync, a rebuild or a repair has looked at every file since the last hand edit."""
        self.edited: set[str] = set()
        """Episodes edited by hand since the index last looked: a mark it holds may be stale."""
        self.lagging: set[str] = set()
        """Episodes a killed write may have left the index behind on (until sync, rebuild, repair)."""

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def file(self, ep: str) -> Path:
        return Path(self.store.root, "shows", "s", "episodes", ep, "episode.yaml")

    def log(self, ep: str) -> Path:
        return self.file(ep).parent / "events.jsonl"

    def try_(self, name: str, call: Any) -> None:
        try:
            call()
            FIGURES[name + " ok"] += 1
        except StatekitError:
            FIGURES[name + " refused"] += 1

    # --- writes ---------------------------------------------------------------------------

    @rule(ep=st.sampled_from(EPISODES), stage=st.sampled_from(STAGES), checked=st.booleans())
    def advance(self, ep: str, stage: str, checked: bool) -> None:
        expected = self.store.get("s", ep).version if checked else None
        self.try_("advance", lambda: self.store.advance("s", ep, stage, cost=0.5, expected_version=expected))

    @rule(ep=st.sampled_from(EPISODES), pick=st.integers(0, 3))
    def advance_legally(self, ep: str, pick: int) -> None:
        """A move the graph allows from the stage the store reports (most random moves are
        refused, and a run of examples must still see writes succeed)."""
        stage = self.store.get("s", ep).stage
        allowed = self.store.writer.pipeline.next_stages(stage)
        if allowed:
            self.try_("advance", lambda: self.store.advance("s", ep, allowed[pick % len(allowed)], cost=0.5))

    @rule(ep=st.sampled_from(EPISODES), title=st.text(alphabet="abc ", max_size=5))
    def update(self, ep: str, title: str) -> None:
        self.try_("update", lambda: self.store.update("s", ep, title=title))

    # --- a person's edits -----------------------------------------------------------------

    def set_line(self, ep: str, key: str, value: str) -> None:
        path = self.file(ep)
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            return
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines()]
        path.write_text("\n".join(lines) + "\n")
        self.looked = False
        self.edited.add(ep)

    @rule(ep=st.sampled_from(EPISODES), title=st.text(alphabet="xyz", min_size=1, max_size=4))
    def hand_edit_title(self, ep: str, title: str) -> None:
        self.set_line(ep, "title", title)

    @rule(ep=st.sampled_from(EPISODES), stage=st.sampled_from(STAGES))
    def hand_edit_stage(self, ep: str, stage: str) -> None:
        """A legal or an illegal move, judged from the committed stage."""
        self.set_line(ep, "stage", stage)

    @rule(ep=st.sampled_from(EPISODES), value=st.sampled_from(["many", "-3", "[1, 2]"]))
    def hand_edit_invalid_value(self, ep: str, value: str) -> None:
        """Readable YAML, but not a valid episode."""
        self.set_line(ep, "version", value)

    @rule(ep=st.sampled_from(EPISODES))
    def hand_edit_comment(self, ep: str) -> None:
        """Only a comment: the data is the same, the bytes are not."""
        with open(self.file(ep), "ab") as f:
            f.write(b"# checked by hand\n")
        self.looked = False
        self.edited.add(ep)

    @rule(ep=st.sampled_from(EPISODES))
    def damage(self, ep: str) -> None:
        self.file(ep).write_text("title: [unclosed\n")
        self.looked = False
        self.edited.add(ep)

    # --- crashes ----------------------------------------------------------------------------

    @rule(ep=st.sampled_from(EPISODES), title=st.text(alphabet="pq", min_size=1, max_size=3))
    def crashed_write(self, ep: str, title: str) -> None:
        """A write that failed after its event was appended, before its file was renamed in
        (a real write through a disk whose rename fails: what a crash at that point leaves)."""
        crashing = Store.open(self.store.root, disk=RenameFails())
        try:
            crashing.update("s", ep, title=title)
        except StatekitError:
            pass
        finally:
            crashing.close()

    @rule(ep=st.sampled_from(EPISODES), kill_at=st.integers(0, 14), stage=st.sampled_from(STAGES))
    def killed_write(self, ep: str, kill_at: int, stage: str) -> None:
        """A real process killed with SIGKILL right before its ``kill_at``-th system call
        that changes the disk, in an advance (which may first adopt a pending edit)."""
        root = self.store.root

        def work() -> None:
            try:
                Store.open(root, disk=KillDisk(kill_at)).advance("s", ep, stage)
            except StatekitError:
                pass

        FIGURES["killed write: " + in_child(work)] += 1
        self.lagging.add(ep)

    # --- maintenance ------------------------------------------------------------------------

    def looked_at_all(self) -> None:
        self.looked = True
        self.edited.clear()
        self.lagging.clear()

    @rule()
    def sync(self) -> None:
        self.store.sync()
        self.looked_at_all()

    @rule()
    def rebuild(self) -> None:
        self.store.rebuild_index()
        self.looked_at_all()

    @rule()
    def repair(self) -> None:
        self.store.repair()
        self.looked_at_all()

    @rule(ep=st.sampled_from(EPISODES))
    def revert(self, ep: str) -> None:
        self.try_("revert", lambda: self.store.revert("s", ep))

    # --- after every step -------------------------------------------------------------------

    @invariant()
    def every_path_reports_the_committed_version(self) -> None:
        indexed = {m.episode_id: m for m in self.store.list()}
        stages: Counter[str] = Counter()
        pending = set()
        for ep in EPISODES:
            committed = self.store.get("s", ep)
            data = committed.model_dump(mode="json")
            stages[committed.stage] += 1
            # the one rule, judged from the log and the file's bytes
            everything = read_events(str(self.log(ep)), 1 << 62)
            line = next(e for e in everything if e["version"] == committed.version)
            assert [e["version"] for e in everything][: committed.version] == list(range(1, committed.version + 1))
            assert len(everything) <= committed.version + 1  # at most one uncommitted line (a crashed write's)
            try:
                raw: bytes | None = self.file(ep).read_bytes()
            except OSError:
                raw = None
            is_pending = raw is None or hashlib.sha256(raw).hexdigest() != line["sha256"]
            assert (committed.pending is not None) == is_pending, (ep, committed.pending, line["sha256"])
            if is_pending:
                pending.add(ep)
            # the log rebuilds it, and every version before it
            lines = read_events(str(self.log(ep)), committed.version)
            versions = replay(lines)
            assert versions and versions[-1] == (committed.version, data)
            history = self.store.history("s", ep)
            assert [h.version for h in history] == list(range(1, committed.version + 1))
            assert [h.model_dump(mode="json") for h in history] == [d for _v, d in versions]
            assert [e.version for e in self.store.events("s", ep)] == list(range(1, committed.version + 1))
            if not is_pending:  # a committed file is what the log says
                assert self.store.writer.load("s", ep)[1].model.model_dump(mode="json") == data
            if ep in self.lagging:
                continue
            # the index holds the committed version, and marks pending edits once it looked
            assert indexed[ep].model_dump(mode="json") == data
            if self.looked:
                assert (indexed[ep].pending is not None) == is_pending, (ep, indexed[ep].pending)
            elif indexed[ep].pending is not None:  # stale only if a hand edit (e.g. one undoing another) came since
                assert is_pending or ep in self.edited, f"{ep}: the index marks a pending edit of a committed file"
        if not self.lagging:
            assert {k: v for k, v in self.store.counts().items() if v} == dict(stages)
        found = Counter((p.kind, p.episode) for p in self.store.verify().problems
                        if not (p.kind == "index" and (p.episode is None or p.episode[2:] in self.lagging | self.edited)))
        assert all(kind in ("edited", "invalid") for kind, _ep in found), found
        assert sorted(ep for _kind, ep in found) == sorted(f"s/{ep}" for ep in pending), found
        FIGURES["pending after a step"] += len(pending)


Ledger.TestCase.settings = settings(max_examples=int(os.environ.get("MODEL_EXAMPLES", 0)) or size(12, 200),
                                    stateful_step_count=size(20, 40), deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


def test_the_ledger_against_its_rules() -> None:
    FIGURES.clear()
    Ledger.TestCase("runTest").runTest()
    print("\nledger model figures:", dict(sorted(FIGURES.items())))
    # the steps that matter happened: pending edits seen, writes over them, real kills
    assert FIGURES["pending after a step"] > 0 and FIGURES["advance ok"] > 0, FIGURES
    assert sum(n for k, n in FIGURES.items() if k.startswith("killed write")) > 0, FIGURES
