"""Simulated power loss: every crash state a weak persistence model allows,
checked by the oracle in ``scenarios``.

For each scenario the operation runs once on a ``RecordingDisk``, which
logs its file-system operations. For every prefix of that log, every state
a power cut there may leave (``powerloss.crash_states``: unsynced data
lost, torn or zeroed; unsynced directory entries lost) is written out as a
real tree and checked. After the last operation the call had returned, so
its result must be in every state.

The mutation check removes, through the recording disk, the fsync of the
temp file before its rename, or the fsync of the directory after it, and
shows that the harness then finds broken states: it can fail.

Fast tier: three scenarios in YAML, at most 6 states per crash point;
``make stress``: every scenario in YAML and JSON, every state.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from .conftest import STRESS
from .figures import report
from .powerloss import Image, Op, RecordingDisk, capture, crash_states, materialize
from .scenarios import SCENARIOS, Scenario, build_template, check, fresh_copy, open_store, outcome

FORMATS = ["yaml", "json"] if STRESS else ["yaml"]
NAMES = list(SCENARIOS) if STRESS else ["create", "advance", "checkpoint"]
LIMIT = None if STRESS else 6


def record_ops(template: Path, work: Path, scenario: Scenario,
               skip: frozenset[str] = frozenset()) -> tuple[Image, list[Op], int]:
    """The store before (taken as durable), the operations the call made, and
    how many calls ``skip`` removed."""
    root = fresh_copy(template, work / "recorded")
    before = capture(root)
    disk = RecordingDisk(skip)
    store = open_store(root, disk=disk)
    scenario.op(store)
    store.close()
    return before, disk.ops, disk.skipped


def explore(scenario: Scenario, template: Path, work: Path, *, skip: frozenset[str] = frozenset(),
            limit: int | None = LIMIT, stop_at: int | None = None) -> tuple[int, list[str], int]:
    """(states checked, failures, operations recorded)."""
    expected = outcome(scenario, template, work)
    before, ops, skipped = record_ops(template, work, scenario, skip)
    assert not skip or skipped, f"the switch {set(skip)} removed no call"
    rng = random.Random(f"{scenario.name}")
    states = 0
    failures: list[str] = []
    for k in range(len(ops) + 1):
        for state in crash_states(before, ops, k, limit=limit, rng=rng):
            states += 1
            root = work / "state"
            if root.exists():
                shutil.rmtree(root)
            materialize(state, str(root))
            where = f"after {k} of {len(ops)} operations" + (f" (last: {ops[k - 1]})" if k else "")
            for problem in check(root, scenario, expected, acknowledged=k == len(ops)):
                failures.append(f"power cut {where}: {problem}")
            if stop_at is not None and len(failures) >= stop_at:
                return states, failures, len(ops)
    return states, failures, len(ops)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_every_crash_state_of_an_operation_keeps_the_guarantees(
        tmp_path_factory: pytest.TempPathFactory, name: str, fmt: str) -> None:
    scenario = SCENARIOS[name]
    work = tmp_path_factory.mktemp(f"power-{name}-{fmt}")
    template = build_template(scenario, fmt, work / "template")
    states, failures, ops = explore(scenario, template, work)
    report("power_loss", case=f"{name}/{fmt}", figures={"operations": ops, "states": states, "failures": len(failures)})
    assert states > ops  # more than one state per crash point somewhere: the model does explore
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("switch", ["file_fsync", "dir_fsync"])
def test_the_harness_fails_when_a_sync_is_removed(tmp_path_factory: pytest.TempPathFactory, switch: str) -> None:
    """Mutation check: without the temp file's fsync, a power cut can leave the
    renamed file empty or torn; without the directory's, it can undo a
    rename whose call had returned. Either way the oracle must object."""
    scenario = SCENARIOS["advance"]
    work = tmp_path_factory.mktemp(f"mutant-{switch}")
    template = build_template(scenario, "yaml", work / "template")
    states, failures, ops = explore(scenario, template, work, skip=frozenset({switch}), limit=None,
                                    stop_at=None if STRESS else 1)
    report("power_loss", case=f"mutant {switch}",
           figures={"operations": ops, "states": states, "failures": len(failures), "first": failures[:1]})
    assert failures, f"with {switch} removed, no crash state broke a guarantee: the harness cannot see it"
    if switch == "file_fsync":
        # a store before the ledger reads the torn file (or refuses it); a ledger store reads the
        # committed version from the log, and the next write refuses the torn file until repair. The
        # temp file is the oldest backup's file reused (files.atomic_write's recycle): unsynced, it can
        # come back as that older version, which reads as a hand edit the log never saw (an illegal
        # move, an index that differs from a rebuild)
        assert any("does not read" in f or "neither" in f or "returned" in f or "raised CorruptFileError" in f
                   or "does not allow" in f or "differs from a rebuild" in f
                   for f in failures), failures[:3]
    else:
        assert any("the call returned" in f for f in failures)
