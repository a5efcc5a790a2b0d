"""The README's examples run as written (in a scratch directory)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_examples_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    code = blocks("python")
    assert len(code) >= 3
    for block in code:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    store = namespace["store"]
    assert store.get("oliver", "ep001").stage == "audio"  # type: ignore[attr-defined]


def test_pipeline_example_is_a_valid_pipeline(tmp_path: Path) -> None:
    from statekit import Store

    spec = tmp_path / "shots.yaml"
    spec.write_text(blocks("yaml")[0])
    store = Store.init(tmp_path / "s", pipeline=spec)
    assert store.pipeline.gates == ("final",)


def test_shell_examples_run(tmp_path: Path) -> None:
    import os

    from statekit.demo import walk

    exe = Path(sys.executable).with_name("statekit")
    repo = README.parent
    for _ in walk(tmp_path / "mine"):  # "in a store": the examples without --root run there
        pass
    env = {**os.environ, "STATEKIT_ROOT": str(tmp_path / "mine")}
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if not line.startswith("statekit "):
                continue  # make targets are what this suite runs under
            args = [a.replace("data/", str(repo / "data") + "/") for a in shlex.split(line)[1:]]
            result = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, env=env)
            assert result.returncode == 0, (line, result.stderr)


def test_sql_reference_queries_run_on_a_real_index(tmp_path: Path) -> None:
    from statekit import Store
    from statekit.demo import walk

    for _ in walk(tmp_path / "s"):
        pass
    store = Store.open(tmp_path / "s")
    store.create("hooting-yard", "stuck")
    path = Path(store.root, "shows/hooting-yard/episodes/stuck/episode.yaml")
    path.write_text(path.read_text().replace("title: ''", "title: fixed by hand"))
    store.sync()
    queries = blocks("sql")
    assert len(queries) == 11
    answers = {}
    for query in queries:
        columns, rows = store.sql(query)
        assert columns, query
        answers[query.splitlines()[0]] = rows
    assert ("published", 1) in answers["-- 1. Episodes per stage, all shows"]
    assert answers["-- 10. Hand edits that sync adopted, newest first, with the fields they changed"][0][:3] == (
        "hooting-yard", "stuck", 2)
    failures = answers["-- 11. Failures by kind and what was done about them, last 7 days"]
    assert sorted(failures) == [("interrupted", "retry", 1), ("system_resource_exceeded", "retry", 1)]
