"""The README's examples run as written (in a scratch directory)."""

from __future__ import annotations

import re
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


SKIPPED_IN_SESSION = ("make ",)  # the quickstart's make targets: this suite is what `make test` runs


def shell_session() -> str:
    """Every ```sh block of the README, in order, as one bash script (make lines left out)."""
    lines = []
    for block in blocks("sh"):
        lines += [line for line in block.splitlines() if not line.lstrip().startswith(SKIPPED_IN_SESSION)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's shell examples, run as a new user would: in an empty folder,
    statekit on the PATH, every command as written (``data/`` is the clone's)."""
    import os

    here = tmp_path_factory.mktemp("readme")
    script = shell_session().replace(" data/", f" {README.parent / 'data'}/")
    env = {k: v for k, v in os.environ.items() if k != "STATEKIT_ROOT"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=here, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return here, done.stdout


def test_shell_examples_run_as_written(session: tuple[Path, str]) -> None:
    here, out = session
    assert "report: " in out and "verify: ok" in out                    # the demo, into ./tour
    assert (here / "tour" / "progress.html").read_text().lower().startswith("<!doctype html")
    assert "refused, exit 2" in out                                    # the illegal move
    assert "exit 1: changed outside statekit" in out and "changed  oliver/ep001: title" in out
    assert "# my title" in (here / "podcasts/shows/oliver/episodes/ep001/episode.yaml").read_text()
    assert "exit 1: damage found" in out and "restore oliver/ep001 from backup 1" in out  # the runbook
    assert "imported 3" in out                                         # the schema-0 import


def test_every_statekit_command_in_the_reference_exists() -> None:
    from click.testing import CliRunner

    from statekit.cli import main

    reference = re.search(r"## Command line.*?```\n(.*?)```", README.read_text(), flags=re.S)
    assert reference is not None
    for line in reference.group(1).splitlines():
        words = [w for w in line.split()[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
        command = words[:2] if words[0] in ("db", "asset", "cache") else words[:1]
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0, (line, result.output)


def test_sql_reference_queries_run_on_a_real_index(session: tuple[Path, str]) -> None:
    from statekit import Store

    here, _ = session
    queries = blocks("sql")
    assert len(queries) == 12
    answers: dict[str, dict[str, list[tuple[object, ...]]]] = {}
    for name in ("tour/store", "podcasts"):
        store = Store.open(here / name)
        for query in queries:
            columns, rows = store.sql(query)
            assert columns, query
            answers.setdefault(query.splitlines()[0], {})[name] = rows
    per_stage = dict(answers["-- 1. Episodes per stage, all shows"]["tour/store"])
    assert per_stage == {"published": 173, "scheduled": 24, "skipped": 3}
    edits = answers["-- 10. Hand edits that sync adopted, newest first, with the fields they changed"]["podcasts"]
    assert edits[0][:2] == ("oliver", "ep001") and "title" in edits[0][4]
    kinds = {(kind, action) for kind, action, _n in
             answers["-- 11. Failures by kind and what was done about them, last 7 days"]["tour/store"]}
    assert {("transient_network", "retry"), ("interrupted", "retry"),
            ("permanent_file_corruption", "give_up")} <= kinds
    media = answers["-- 12. Media stored per show and kind (each asset once per episode that names it)"]
    assert sum(n for _show, _kind, n, _bytes in media["tour/store"]) == 398
    assert media["podcasts"] == [("oliver", "audio", 1, 16)]
