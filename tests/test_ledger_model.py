"""A model-based test of the ledger: writes, hand edits (valid, invalid, illegal moves),
crashed writes, sync, rebuild, repair and revert in any order; after every step the
log replays to the committed version, and every path reports that same version."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from statekit import StatekitError, Store
from statekit.eventlog import read_events, replay
from statekit.files import Disk

EPISODES = ("a", "b")


class RenameFails(Disk):
    """A disk on which renaming an episode file into place fails (EIO)."""

    def replace(self, src: str, dst: str, **kw: Any) -> None:
        if os.path.basename(dst).startswith("episode."):
            raise OSError(errno.EIO, "injected: the rename never happened", dst)
        super().replace(src, dst, **kw)
STAGES = ("discovered", "downloading", "downloaded", "converting", "published", "failed")


class Ledger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="ledger-model-")
        self.store = Store.init(Path(self.tmp, "store"), ledger=True)
        for ep in EPISODES:
            self.store.create("s", ep)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def file(self, ep: str) -> Path:
        return Path(self.store.root, "shows", "s", "episodes", ep, "episode.yaml")

    def log(self, ep: str) -> Path:
        return self.file(ep).parent / "events.jsonl"

    @rule(ep=st.sampled_from(EPISODES), stage=st.sampled_from(STAGES))
    def advance(self, ep: str, stage: str) -> None:
        try:
            self.store.advance("s", ep, stage, cost=0.5)
        except StatekitError:
            pass

    @rule(ep=st.sampled_from(EPISODES), title=st.text(alphabet="abc ", max_size=5))
    def update(self, ep: str, title: str) -> None:
        try:
            self.store.update("s", ep, title=title)
        except StatekitError:
            pass

    @rule(ep=st.sampled_from(EPISODES), title=st.text(alphabet="xyz", min_size=1, max_size=4))
    def hand_edit_title(self, ep: str, title: str) -> None:
        path = self.file(ep)
        text = path.read_text()
        lines = [f"title: {title}" if line.startswith("title:") else line for line in text.splitlines()]
        path.write_text("\n".join(lines) + "\n")

    @rule(ep=st.sampled_from(EPISODES), stage=st.sampled_from(STAGES))
    def hand_edit_stage(self, ep: str, stage: str) -> None:
        path = self.file(ep)
        lines = [f"stage: {stage}" if line.startswith("stage:") else line for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")

    @rule(ep=st.sampled_from(EPISODES))
    def damage(self, ep: str) -> None:
        self.file(ep).write_text("title: [unclosed\n")

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

    @rule()
    def sync(self) -> None:
        self.store.sync()

    @rule()
    def rebuild(self) -> None:
        self.store.rebuild_index()

    @rule()
    def repair(self) -> None:
        self.store.repair()

    @rule(ep=st.sampled_from(EPISODES))
    def revert(self, ep: str) -> None:
        try:
            self.store.revert("s", ep)
        except StatekitError:
            pass

    @invariant()
    def every_path_reports_the_committed_version(self) -> None:
        indexed = {m.episode_id: m for m in self.store.list()}
        for ep in EPISODES:
            committed = self.store.get("s", ep)
            lines = read_events(str(self.log(ep)), committed.version)
            versions = replay(lines)
            assert versions and versions[-1][0] == committed.version
            assert versions[-1][1] == committed.model_dump(mode="json")  # the log rebuilds it
            data = committed.model_dump(mode="json")
            assert self.store.history("s", ep)[-1].model_dump(mode="json") == data
            assert indexed[ep].model_dump(mode="json") == data  # the index holds the committed version
            if committed.pending is None:  # a committed file is what the log says
                assert self.store.writer.load("s", ep)[1].model.model_dump(mode="json") == data
        problems = [p for p in self.store.verify().problems if p.kind in ("chain", "events")]
        assert problems == [], problems


Ledger.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
TestLedger = Ledger.TestCase
