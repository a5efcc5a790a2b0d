"""``benchmarks/bench_fs_costs.py``, the diagnostic of what each file-system call a write makes
costs: it measures every operation it names, in the folder it is given, and refuses bad options
in one line (it is run by people reading benchmark ratios, so its output must be whole)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fs_costs.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_it_measures_each_call_in_the_given_folder_and_leaves_nothing(tmp_path: Path) -> None:
    done = run("--dir", str(tmp_path), "--ops", "5", "--rounds", "2", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["per_call_us"]
    expected = {"create a named file (O_CREAT)", "new named file, 800 B, fsync", "overwrite 800 B in place, fsync",
                "mkdir", "link (a second name)", "rename", "unlink"}
    assert expected <= set(found)  # (and O_TMPFILE where the file system has it)
    for name, costs in found.items():
        assert costs["wall"] > 0 and costs["cpu_lowest"] <= costs["cpu"] <= costs["cpu_highest"], name
    assert os.listdir(tmp_path) == []  # its work folder is gone


def test_the_table_names_every_call_and_its_ratio_to_a_link(tmp_path: Path) -> None:
    done = run("--dir", str(tmp_path), "--ops", "3", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "ratio to a link" in lines[0]
    link = next(line for line in lines if line.lstrip().startswith("link"))
    assert link.rstrip().endswith("1.0x")


def test_bad_options_are_refused_in_one_line(tmp_path: Path) -> None:
    for args, says in ((["--dir", str(tmp_path / "missing")], "not a folder"),
                       (["--ops", "0"], "at least 1"), (["--rounds", "0"], "at least 1")):
        done = run(*args)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, args
