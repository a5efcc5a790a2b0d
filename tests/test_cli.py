"""The command line: each command works, user errors are one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import Store
from statekit.cli import main
from statekit.index.tables import INDEX_REVISION

from .conftest import episode_file, snapshot

LEGACY = Path(__file__).resolve().parent.parent / "data" / "legacy" / "processed"


def run(*args: str, root: Path | None = None, code: int = 0) -> str:
    argv = (["--root", str(root)] if root else []) + list(args)
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == code, (argv, result.output, result.stderr if hasattr(result, "stderr") else "")
    return result.output


def error(*args: str, root: Path | None = None) -> str:
    """Run a command that must fail as a user error: one line, exit 2, no traceback."""
    argv = (["--root", str(root)] if root else []) + list(args)
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 2, (argv, result.output)
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in result.output
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no message"
    return lines[-1]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    run("init", str(tmp_path / "store"))
    return tmp_path / "store"


def test_every_command_has_help() -> None:
    for name, command in main.commands.items():
        assert command.help, name
        out = run(name, "--help")
        assert "Usage:" in out


def test_walk_an_episode(root: Path) -> None:
    assert "created oliver/ep001 at discovered (version 1)" in run("create", "oliver/ep001", "--title", "Stars",
                                                                   root=root)
    assert "discovered -> downloading (version 2)" in run("advance", "oliver/ep001", "downloading", root=root)
    run("advance", "oliver/ep001", "downloaded", "--cost", "0.25", "-m", "41 MB", "--expected-version", "2",
        root=root)
    shown = run("show", "oliver/ep001", root=root)
    assert "downloaded" in shown and "41 MB" in shown and "0.25" in shown
    data = json.loads(run("show", "oliver/ep001", "--json", root=root))
    assert data["episode"]["version"] == 3 and [e["version"] for e in data["events"]] == [1, 2, 3]
    listed = json.loads(run("list", "--json", root=root))
    assert [(e["show_id"], e["episode_id"], e["stage"]) for e in listed] == [("oliver", "ep001", "downloaded")]
    assert "oliver" in run("list", "--stage", "downloaded", root=root)


def test_root_is_found_from_env_and_parents(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("create", "s/e", root=root)
    monkeypatch.chdir(root / "shows" / "s")
    assert json.loads(run("list", "--json"))[0]["episode_id"] == "e"  # found by walking up, like git
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["list", "--json"], env={"STATEKIT_ROOT": str(root)})
    assert result.exit_code == 0 and json.loads(result.output)[0]["episode_id"] == "e"


def test_approve_gate(tmp_path: Path) -> None:
    root = tmp_path / "p"
    run("init", str(root), "--pipeline", "podcast")
    run("create", "oliver/ep1", root=root)
    for stage in ("outline", "segments", "scripts"):
        run("advance", "oliver/ep1", stage, root=root)
    assert "approve" in error("advance", "oliver/ep1", "audio", root=root)
    assert "approved by ana" in run("approve", "oliver/ep1", "audio", "--by", "ana", root=root)
    run("advance", "oliver/ep1", "audio", root=root)


def test_import_and_migrate(root: Path) -> None:
    out = run("import", str(LEGACY), "--show", "hooting-yard", root=root)
    assert "imported 3, skipped 0 already present, rejected 0" in out
    assert "every file is at the current schema" in run("migrate", "--dry-run", root=root)
    store = Store.open(root)
    path = episode_file(store, "hooting-yard", "hy0_hooting_yard_2004-04-14")
    path.write_bytes((LEGACY / "2004" / "hy0_hooting_yard_2004-04-14.yaml").read_bytes())
    assert "would migrate" in run("migrate", "--dry-run", root=root)
    assert "migrated" in run("migrate", root=root)


def test_import_reports_rejections_with_exit_1(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "bad.yaml").write_text("stage: [\n")
    result = CliRunner().invoke(main, ["--root", str(root), "import", str(folder), "--show", "s"])
    assert result.exit_code == 1 and "rejected bad.yaml" in result.output + (result.stderr or "")


def test_delete(root: Path) -> None:
    run("create", "s/e", root=root)
    assert "trash" in run("delete", "s/e", root=root)
    assert "not found" in error("show", "s/e", root=root)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("create", "../ep"), "invalid show id"),
        (("create", "s/e", "--bogus"), "No such option '--bogus'. (see 'statekit create --help')"),
        (("frobnicate",), "No such command 'frobnicate'"),
        (("create", "s/../../etc"), "expected SHOW/EP"),
        (("create", "/etc/passwd"), "expected SHOW/EP"),
        (("create", "s/" + "x" * 200), "at most 128"),
        (("create", "noslash"), "expected SHOW/EP"),
        (("show", "nope/ep"), "show 'nope' not found"),
        (("show", "s/nope"), "episode s/nope not found"),
        (("advance", "s/e", "published"), "illegal move 'discovered' -> 'published'"),
        (("advance", "s/e", "teleport"), "unknown stage 'teleport'"),
        (("advance", "s/e", "downloading", "--expected-version", "9"), "not 9"),
        (("advance", "s/e", "downloading", "--cost", "-1"), "cost must be"),
        (("advance", "s/e", "downloading", "--cost", "abc"), "abc"),
        (("list", "--stage", "nope"), "unknown stage"),
        (("approve", "s/e", "downloading", "--by", "x"), "no approval gate"),
        (("create", "s/e"), "already exists"),
    ],
)
def test_user_errors_are_one_line_and_change_nothing(root: Path, args: tuple[str, ...], needle: str) -> None:
    run("create", "s/e", root=root)
    before = snapshot(root)
    assert needle in error(*args, root=root)
    assert snapshot(root) == before


def test_broken_file_is_one_line(root: Path) -> None:
    run("create", "s/e", root=root)
    path = episode_file(Store.open(root), "s", "e")
    path.write_bytes(path.read_bytes()[:40])
    line = error("advance", "s/e", "downloading", root=root)
    assert str(path) in line
    path.write_bytes(b"\x00\xff\xfe binary \x89PNG")
    assert "UTF-8" in error("show", "s/e", root=root)


def test_no_store_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no statekit store" in error("list")
    assert "no statekit store" in error("list", root=tmp_path)
    run("init", str(tmp_path / "s2"))
    assert "already exists" in error("init", str(tmp_path / "s2"))
    assert "unknown pipeline preset 'nope'" in error("init", str(tmp_path / "s3"), "--pipeline", "nope")


def test_console_script_runs_as_a_real_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("statekit")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "statekit.cli"]
    root = tmp_path / "s"
    subprocess.run([*command, "init", str(root)], check=True, capture_output=True)
    bad = subprocess.run([*command, "--root", str(root), "advance", "s/e", "x"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    demo = subprocess.run([*command, "demo", str(tmp_path / "demo")], capture_output=True, text=True, check=True)
    assert "-> published" in demo.stdout and "refused: illegal move" in demo.stdout


# --- the index commands ----------------------------------------------------------------


def test_status_next_sql(root: Path) -> None:
    run("create", "oliver/ep1", root=root)
    run("create", "oliver/ep2", root=root)
    run("advance", "oliver/ep2", "downloading", root=root)
    status = json.loads(run("status", "--json", root=root))
    assert status[0]["stages"] == {"discovered": 1, "downloading": 1} and status[0]["completion"] == 0.0
    assert "2 episodes, 0 done (0.0%)" in run("status", root=root)
    # ep2 was moved into the run stage by hand, not by a leased run: it waits there for a worker
    assert [e["episode_id"] for e in json.loads(run("next", "downloading", "--json", root=root))] == ["ep1", "ep2"]
    assert json.loads(run("next", "converting", "--json", root=root)) == []
    rows = json.loads(run("sql", "SELECT stage, n FROM stage_counts ORDER BY stage", "--json", root=root))
    assert rows == [{"stage": "discovered", "n": 1}, {"stage": "downloading", "n": 1}]
    assert run("sql", "SELECT stage, n FROM stage_counts ORDER BY stage", "--csv", root=root) == (
        "stage,n\ndiscovered,1\ndownloading,1\n")
    assert "readonly" in error("sql", "DELETE FROM episodes", root=root)
    assert "syntax error" in error("sql", "SELEC nonsense", root=root)


def test_sync_verify_rebuild_exit_codes(root: Path) -> None:
    run("create", "s/e", root=root)
    assert "ok: 1 episodes checked" in run("verify", root=root)
    path = episode_file(Store.open(root), "s", "e")
    path.write_text(path.read_text().replace("title: ''", "title: by hand"))
    assert "changed outside statekit" in run("verify", root=root, code=1)
    assert "changed  s/e: title (now version 2)" in run("sync", root=root)
    assert "ok:" in run("verify", root=root)
    path.write_text(path.read_text().replace("stage: discovered", "stage: published"))
    out = run("sync", root=root, code=1)
    assert "rejected" in out and "'discovered' -> 'published'" in out
    path.write_text(path.read_text().replace("stage: published", "stage: discovered"))
    assert "indexed 1 episodes, 2 events, 1 shows" in run("rebuild-index", root=root)
    assert f"index at revision {INDEX_REVISION}" in run("db", "upgrade", root=root)


def test_long_commands_are_quiet_when_piped(root: Path) -> None:
    run("create", "s/e", root=root)
    exe = Path(sys.executable).with_name("statekit")
    for command in (["rebuild-index"], ["sync"]):
        result = subprocess.run([str(exe), "--root", str(root), *command], capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", result.stderr  # no progress bar in a pipe


# --- failures and recovery ----------------------------------------------------------------


def test_recover_retry_and_errors(root: Path) -> None:
    import time as _time

    store = Store.open(root)
    store.create("s", "dead")
    store.create("s", "held")
    store.run("s", "dead", "downloading", owner="worker-9", lease_seconds=0.2).__enter__()  # and dies
    with store.run("s", "held", "downloading", reraise=False):
        raise FileNotFoundError(2, "No such file or directory", "/in/a.wav")
    assert "leased" in run("show", "s/dead", root=root) and "worker-9" in run("show", "s/dead", root=root)
    assert "held" in run("show", "s/held", root=root)
    _time.sleep(0.25)
    out = run("recover", root=root)
    assert "recovered s/dead: downloading by worker-9 stopped (attempt 1); ready now" in out
    assert "1 recovered, 0 skipped" in out
    assert json.loads(run("recover", "--json", root=root))["recovered"] == []
    assert [e["episode_id"] for e in json.loads(run("next", "downloading", "--json", root=root))] == ["dead"]
    assert "ready to retry downloading" in run("retry", "s/held", "--by", "ana", "--note", "file back", root=root)
    assert "not waiting for a retry" in error("retry", "s/held", root=root)
    log = json.loads(run("errors", "--json", root=root))
    assert [(x["episode_id"], x["kind"], x["action"]) for x in log] == [
        ("held", "user_input_invalid", "hold"), ("dead", "interrupted", "retry")]
    table = run("errors", root=root)
    assert "user_input_invalid" in table and "s/dead" in table
    events = run("show", "s/dead", root=root)
    assert "recovered" in events and "[interrupted, retry]" in events


def test_restore_gc_and_repair(root: Path) -> None:
    run("create", "s/e", "--title", "one", root=root)
    run("advance", "s/e", "downloading", root=root)
    run("advance", "s/e", "failed", root=root)
    listing = json.loads(run("restore", "s/e", "--list", "--json", root=root))
    assert [(b["backup"], b["version"], b["problem"]) for b in listing] == [(1, 2, None), (2, 1, None)]
    assert "saved (UTC)" in run("restore", "s/e", "--list", root=root)
    assert "has 2 backups, not 5" in error("restore", "s/e", "--backup", "5", root=root)
    assert "restored backup 2; now at discovered (version 4)" in run("restore", "s/e", "--backup", "2", root=root)
    assert "expected an age" in error("gc", "--backups-older-than", "soon", root=root)
    assert "too long an age" in error("gc", "--backups-older-than", "99999999999999d", root=root)
    assert "too large" in error("gc", "--backups-older-than", "800000d", root=root)
    assert "--json goes with --list" in error("restore", "s/e", "--json", root=root)
    assert "episode s/nope not found" in error("restore", "s/nope", "--list", root=root)
    assert "removed 0 backups (0 B)," in run("gc", root=root)  # default: backups older than 30 days
    assert "would remove 0 backups (0 B), 0 assets" in run("gc", "--backups-older-than", "7d", "--dry-run", root=root)
    assert "removed 3 backups (1.4 kB)," in run("gc", "--backups-older-than", "0s", root=root)
    assert "nothing to repair" in run("repair", root=root)
    run("advance", "s/e", "downloading", root=root)
    path = episode_file(Store.open(root), "s", "e")
    path.write_text("stage: [")
    assert "restore s/e from backup 1 (version 4)" in run("repair", "--dry-run", root=root)
    assert path.read_text() == "stage: ["
    out = run("repair", root=root)
    assert "restore s/e from backup 1" in out and "1 action(s)" in out
    assert "ok:" in run("verify", root=root)
    run("create", "s/lost", root=root)
    episode_file(Store.open(root), "s", "lost").write_text("stage: [")
    assert "cannot fix: s/lost" in run("repair", root=root, code=1)


def test_parse_age() -> None:
    from datetime import timedelta

    from statekit.cli import parse_age

    assert parse_age("7d") == timedelta(days=7)
    assert parse_age("1w2d 3h") == timedelta(days=9, hours=3)
    assert parse_age("90s") == timedelta(seconds=90)
    for bad in ("", "7", "d7", "7 days", "-1d", "7d!"):
        with pytest.raises(Exception, match="expected an age"):
            parse_age(bad)
