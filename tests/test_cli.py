"""The command line: each command works, user errors are one line and exit 2."""

from __future__ import annotations

import ctypes
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from statekit import Store
from statekit.cli import main
from statekit.index.tables import INDEX_REVISION

from .conftest import episode_file, snapshot
from .test_demo import small_data

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
        assert " ".join(command.help.split()[:5]) in " ".join(out.split()), name


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
        (("create", "s/e", "--bogus"), "(see 'statekit create --help')"),
        (("frobnicate",), "(see 'statekit --help')"),
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
    assert "UTF-8" in error("advance", "s/e", "downloading", root=root)
    shown = run("show", "s/e", root=root)  # the committed version, and why the file cannot be read
    assert "pending hand edit" in shown and "UTF-8" in shown


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
    # (a small generated set: the shipped sample data's demo runs in test_demo and the README's session)
    data = small_data(tmp_path / "data")
    demo = subprocess.run([*command, "demo", str(tmp_path / "demo"), "--data", str(data)],
                          capture_output=True, text=True, check=True)
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
    for refused in ("DELETE FROM episodes", "SELEC nonsense"):
        assert error("sql", refused, root=root).startswith("statekit: error: the index refused the query: ")
    assert json.loads(run("sql", "SELECT stage, n FROM stage_counts ORDER BY stage", "--json", root=root)) == rows


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


def test_restore_gc_and_repair(tmp_path: Path) -> None:
    """A store before the ledger: repair restores backups (a ledger store's: the log's version, below)."""
    run("init", "--no-ledger", str(tmp_path / "store"))
    root = tmp_path / "store"
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


def test_repair_puts_back_the_committed_version_from_the_log(root: Path) -> None:
    run("create", "s/lost", root=root)  # no backup yet: the log has it
    path = episode_file(Store.open(root), "s", "lost")
    path.write_text("stage: [")
    assert "put back the committed version of s/lost from its log" in run("repair", "--dry-run", root=root)
    assert path.read_text() == "stage: ["
    assert "put back the committed version of s/lost from its log" in run("repair", root=root)
    assert "ok:" in run("verify", root=root)
    assert json.loads(run("show", "s/lost", "--json", root=root))["episode"]["version"] == 2


def test_parse_age() -> None:
    from datetime import timedelta

    from statekit.cli import parse_age

    assert parse_age("7d") == timedelta(days=7)
    assert parse_age("1w2d 3h") == timedelta(days=9, hours=3)
    assert parse_age("90s") == timedelta(seconds=90)
    for bad in ("", "7", "d7", "7 days", "-1d", "7d!"):
        with pytest.raises(Exception, match="expected an age"):
            parse_age(bad)


# --- issue 12: bad input and the errors people see --------------------------------------


def statekit_command() -> list[str]:
    exe = Path(sys.executable).with_name("statekit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "statekit.cli"]


@pytest.mark.parametrize(("args", "named"), [
    ((b"create", b"s/new", b"--title", b"bad\xff"), "--title"),
    ((b"create", b"fresh/new", b"--title", b"bad\xff"), "--title"),
    ((b"advance", b"s/e", b"downloading", b"--message", b"\xfe"), "--message"),
    ((b"advance", b"s/e", b"downloading", b"-m", b"\xfe"), "--message"),
    ((b"create", b"s\xff/e"), "SHOW/EP"),
    ((b"list", b"--show", b"\xff"), "--show"),
    ((b"sql", b"SELECT '\xff'"), "QUERY"),
])
def test_arguments_that_are_not_utf8_are_one_line_naming_them(root: Path, args: tuple[bytes, ...],
                                                              named: str) -> None:
    run("create", "s/e", root=root)
    before = snapshot(root)
    shows = sorted(p.name for p in (root / "shows").iterdir())
    episodes = sorted(p.name for p in (root / "shows" / "s" / "episodes").iterdir())
    result = subprocess.run([*statekit_command(), "--root", str(root), *args], capture_output=True)
    assert result.returncode == 2, result.stderr
    line = result.stderr.decode()
    assert line.count("\n") == 1 and line.startswith(f"statekit: error: {named} is not valid UTF-8")
    assert snapshot(root) == before
    assert sorted(p.name for p in (root / "shows").iterdir()) == shows  # no empty folder left behind
    assert sorted(p.name for p in (root / "shows" / "s" / "episodes").iterdir()) == episodes


def test_a_store_path_that_is_not_utf8_works(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/store\xff"
    subprocess.run([*statekit_command(), "init", root], check=True, capture_output=True)
    done = subprocess.run([*statekit_command(), "--root", root, "create", "s/e"], capture_output=True, text=True)
    assert done.returncode == 0 and "created s/e" in done.stdout


def test_a_cost_total_that_overflows_is_one_line(root: Path) -> None:
    run("create", "s/e", root=root)
    run("advance", "s/e", "downloading", "--cost", "1e308", root=root)
    before = snapshot(root)
    line = error("advance", "s/e", "downloaded", "--cost", "1e308", root=root)
    assert "largest number" in line and "non-negative finite" in line
    assert "non-negative finite" in error("advance", "s/e", "downloaded", "--cost", "-5", root=root)
    assert "field named above" not in line
    assert snapshot(root) == before


def test_an_illegal_move_shows_its_hint_once(root: Path) -> None:
    run("create", "s/e", root=root)
    line = error("advance", "s/e", "published", root=root)
    assert line.count("legal next stages from 'discovered': downloading, skipped") == 1


def test_sync_reports_a_boolean_version_with_file_line_and_field(root: Path) -> None:
    run("create", "s/e", root=root)
    path = episode_file(Store.open(root), "s", "e")
    text = path.read_text()
    path.write_text(text.replace("version: 1\n", "version: true\n"))
    out = run("sync", root=root, code=1)
    number = text[: text.index("version: 1\n")].count("\n") + 1
    assert f"rejected {path}:{number}: version:" in out


def legacy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "legacy"
    (folder / "2004").mkdir(parents=True)
    (folder / "2004" / "good.yaml").write_text("episode_id: good-one\nstage: discovered\ntitle: Good\n")
    (folder / "2004" / "zz-again.yml").write_text("episode_id: good-one\nstage: discovered\n")  # a duplicate id
    (folder / "a-link.yaml").symlink_to(folder / "2004" / "good.yaml")
    (folder / "folder.yaml").mkdir()
    (folder / "folder.yaml" / "inner.yaml").write_text("stage: downloading\n")
    (folder / "broken.yaml").write_text("stage: [\n")
    (folder / "reserved.yaml").write_text("episode_id: con\nstage: discovered\n")  # not a usable id
    (folder / "no-stage.yaml").write_text("title: nothing else\n")
    (folder / "notes.txt").write_text("not yaml, not looked at\n")
    os.mkfifo(folder / "pipe.yaml")
    (folder / os.fsdecode(b"odd\xff.yaml")).write_text("stage: discovered\n")
    return folder


def test_import_goes_on_past_bad_files_and_counts_what_it_did(root: Path, tmp_path: Path) -> None:
    folder = legacy_folder(tmp_path)
    report = Store.open(root).import_legacy(folder, "old")
    assert report.counts == {"imported": 3, "skipped": 0, "rejected": 7}
    assert sorted(r["episode"] for r in report.imported) == ["old/good-one", "old/inner", "old/odd"]
    rejected = {r["file"]: r["reason"] for r in report.rejected}
    assert set(rejected) == {"a-link.yaml", "folder.yaml", "broken.yaml", "reserved.yaml", "no-stage.yaml",
                             "pipe.yaml", "2004/zz-again.yml"}
    assert "symbolic link" in rejected["a-link.yaml"] and "directory" in rejected["folder.yaml"]
    assert "not a regular file" in rejected["pipe.yaml"] and "also used by 2004/good.yaml" in rejected[
        "2004/zz-again.yml"]
    assert "reserved" in rejected["reserved.yaml"] and "invalid YAML" in rejected["broken.yaml"]
    again = Store.open(root).import_legacy(folder, "old")  # a re-run skips what is there
    assert again.counts == {"imported": 0, "skipped": 3, "rejected": 7}


def test_import_command_exit_codes_and_json(root: Path, tmp_path: Path) -> None:
    folder = legacy_folder(tmp_path)
    result = CliRunner().invoke(main, ["--root", str(root), "import", str(folder), "--show", "old"])
    assert result.exit_code == 1
    assert "imported 3, skipped 0 already present, rejected 7" in result.stdout
    assert result.stderr.count("rejected ") == 7 and "rejected a-link.yaml: " in result.stderr
    data = json.loads(run("import", str(folder), "--show", "old", "--json", root=root, code=1))
    assert data["counts"] == {"imported": 0, "skipped": 3, "rejected": 7}
    assert {r["file"] for r in data["skipped"]} == {"2004/good.yaml", "folder.yaml/inner.yaml", "odd\\udcff.yaml"}
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "x.yaml").write_text("stage: discovered\n")
    assert json.loads(run("import", str(clean), "--show", "new", "--json", root=root))["counts"]["imported"] == 1


def test_status_keeps_a_long_title_on_one_line_at_any_width(root: Path) -> None:
    from statekit.cli import print_status

    title = "The Complete Hooting Yard Archive: Every Broadcast of Frank Key, Remastered"
    Store.open(root).create_show("hy", title=title)
    run("create", "hy/ep1", root=root)
    shows = Store.open(root).status()
    for width in (120, 80):
        console = Console(width=width, file=io.StringIO(), color_system=None)
        print_status(console, shows)
        lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
        heading = f"hy  {title}"
        if len(heading) <= width:
            assert lines[0].rstrip() == heading
        else:
            assert lines[0].rstrip() == heading[: width - 1] + "…"
        assert lines[1].split() == ["stage", "episodes"]  # the title did not spill onto the next line
    assert f"hy  {title}\n" in run("status", root=root)  # piped: one line too


def test_init_refuses_to_nest_stores(root: Path, tmp_path: Path) -> None:
    line = error("init", str(root / "shows" / "inner"))
    assert f"inside the statekit store at {root}" in line
    assert not (root / "shows" / "inner").exists()
    outer = tmp_path / "outer"
    (outer / "a" / "b").mkdir(parents=True)
    run("init", str(outer / "a" / "b" / "inner"))
    before = sorted(str(p) for p in outer.rglob("*"))
    line = error("init", str(outer))
    assert f"holds a statekit store below it, at {outer / 'a' / 'b' / 'inner'}" in line
    assert sorted(str(p) for p in outer.rglob("*")) == before and not (outer / "statekit.yaml").exists()


def test_init_does_not_look_into_git_statekit_or_symlinks(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    (folder / ".git" / "modules").mkdir(parents=True)
    (folder / ".git" / "modules" / "statekit.yaml").write_text("not a store\n")
    (folder / ".statekit").mkdir()
    (folder / ".statekit" / "statekit.yaml").write_text("not a store\n")
    (folder / "elsewhere").symlink_to(root)  # a store, but through a link: not below this folder
    assert "created store" in run("init", str(folder))


UNREADABLE_IMPORT = """
import json, os, sys
from statekit import Store
top = sys.argv[1]
store = Store.init(os.path.join(top, "store"))
legacy = os.path.join(top, "legacy")
os.makedirs(os.path.join(legacy, "locked"))
for name in ("ok.yaml", "secret.yaml", "locked/hidden.yaml"):
    with open(os.path.join(legacy, name), "w") as f:
        f.write("stage: discovered\\n")
os.chmod(os.path.join(legacy, "secret.yaml"), 0)
os.chmod(os.path.join(legacy, "locked"), 0)
report = store.import_legacy(legacy, "old")
os.chmod(os.path.join(legacy, "locked"), 0o755)
print(json.dumps({"counts": report.counts, "rejected": report.rejected}))
"""


def without_permission_override() -> None:
    """In a child run as root: drop the capabilities that let root read any
    file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so file modes apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_import_reports_files_and_folders_it_cannot_read(tmp_path: Path) -> None:
    drop = without_permission_override if os.geteuid() == 0 else None
    done = subprocess.run([sys.executable, "-c", UNREADABLE_IMPORT, str(tmp_path)], capture_output=True,
                          text=True, preexec_fn=drop)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"] == {"imported": 1, "skipped": 0, "rejected": 2}
    reasons = {r["file"]: r["reason"] for r in result["rejected"]}
    assert "Permission denied" in reasons["secret.yaml"]
    assert "could not list the folder" in reasons["locked/"]
