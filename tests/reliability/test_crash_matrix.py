"""Crash matrix: every operation, killed (SIGKILL, a real process) before
each system call it makes, then checked by the oracle in ``scenarios``.

For each scenario the operation first runs once unharmed, counting its
calls through the ``Disk`` seam (N of them). Then for k = 0..N a forked
child opens the store with a disk that kills the child just before call k
and runs the operation; k = N is the run that completes (the call
returned, so its result must be there). The parent checks the tree the
child left. Fast tier: YAML stores; ``make stress``: YAML and JSON.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statekit.files import Disk

from .conftest import STRESS
from .figures import report
from .scenarios import SCENARIOS, Scenario, build_template, check, fresh_copy, open_store, outcome

FORMATS = ["yaml", "json"] if STRESS else ["yaml"]
CALLS = ("open", "mkstemp", "write", "fsync", "close", "replace", "rename", "truncate", "unlink", "mkdir", "link")


class KillingDisk(Disk):
    """Kills its own process just before call number ``kill_at`` (counting
    from 0); with ``kill_at`` None it only counts."""

    overlap_syncs = False  # the calls come in one fixed order

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.calls: list[str] = []

    def _step(self, name: str) -> None:
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls.append(name)


def _wrap(name: str) -> Callable[..., Any]:
    original = getattr(Disk, name)

    def call(self: KillingDisk, *args: Any, **kwargs: Any) -> Any:
        self._step(name)
        return original(self, *args, **kwargs)

    call.__name__ = name
    return call


for _name in CALLS:
    setattr(KillingDisk, _name, _wrap(_name))


def run_killed(root: Path, scenario: Scenario, kill_at: int) -> bool:
    """Run the operation in a forked child killed before call ``kill_at``;
    True if it completed instead (there were fewer calls)."""
    pid = os.fork()
    if pid == 0:  # the child: a fresh store, never the parent's connections
        code = 1
        try:
            store = open_store(root, disk=KillingDisk(kill_at))
            scenario.op(store)
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return False
    assert os.WEXITSTATUS(status) == 0, f"the child failed before it was killed (exit {os.WEXITSTATUS(status)})"
    return True


def count_calls(template: Path, work: Path, scenario: Scenario) -> list[str]:
    root = fresh_copy(template, work / "count")
    disk = KillingDisk()
    store = open_store(root, disk=disk)
    disk.calls.clear()
    scenario.op(store)
    store.close()
    return disk.calls


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_kill_before_any_call_of_an_operation_breaks_no_guarantee(
        tmp_path_factory: pytest.TempPathFactory, name: str, fmt: str) -> None:
    scenario = SCENARIOS[name]
    work = tmp_path_factory.mktemp(f"matrix-{name}-{fmt}")
    template = build_template(scenario, fmt, work / "template")
    expected = outcome(scenario, template, work)
    calls = count_calls(template, work, scenario)
    assert len(calls) >= 8, calls  # the operation really writes (lock, event, file, syncs)
    failures = []
    completed = 0
    for k in range(len(calls) + 1):
        root = fresh_copy(template, work / "crashed")
        done = run_killed(root, scenario, k)
        assert done == (k == len(calls)), f"kill at {k} of {len(calls)}: completed={done}"
        completed += done
        for problem in check(root, scenario, expected, acknowledged=done):
            where = calls[k] if k < len(calls) else "after the call returned"
            failures.append(f"killed before call {k} ({where}): {problem}")
    report("crash_matrix", case=f"{name}/{fmt}",
           figures={"calls": len(calls), "kills": len(calls), "states": len(calls) + 1, "failures": len(failures)})
    assert completed == 1
    assert not failures, "\n".join(failures)
