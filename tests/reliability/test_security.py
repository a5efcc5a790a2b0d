"""Security (issue 5): crafted ids, symlinks planted inside a store, and YAML
tags never write outside the root and never run code, through the API and
the CLI.

Each test works in a "world" folder holding the store (``root``), a
sentinel folder of files and directories the planted symlinks point to, and
nothing else. After every attack the whole world outside the root must be
byte-identical (links, files, folders; nothing new), the tmp parent must
have no new entry, and no marker file a tag would create may exist.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statekit import InvalidIdError, StatekitError, Store

from .cli import cli_problems, statekit
from .conftest import STRESS, size
from .corpus import CHECKPOINT_STAGE, build_history, tree_state
from .figures import report as record

SHOW, EP = "s", "e"


class Calls:
    """Runs API calls: only StatekitError may escape (with a one-line message)."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.outcomes: Counter[str] = Counter()

    def __call__(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except StatekitError as exc:
            self.outcomes[type(exc).__name__] += 1
            if "\n" in exc.one_line():
                self.failures.append(f"{label}: {type(exc).__name__} is not one line")
            return exc
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            self.failures.append(f"{label}: uncaught {type(exc).__name__}: {str(exc)[:200]}")
            self.outcomes["uncaught"] += 1
            return exc
        self.outcomes["ok"] += 1
        return result


# --- a world: the store, and what lies beside it ---------------------------------------------------


def make_template(base: Path) -> Path:
    root = base / "template"
    store = Store.init(root)
    build_history(store, SHOW, EP)
    store.create(SHOW, "other", title="other")
    store.create("t", "x", title="t/x")
    store.close()
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("security-template"))


def make_world(template: Path, world: Path) -> tuple[Path, Path]:
    """``world/store`` (a copy of the template) and ``world/sentinel`` (copies
    of the store's folders and files, for planted links to point at)."""
    root = world / "store"
    sentinel = world / "sentinel"
    shutil.copytree(template, root, symlinks=True)
    shutil.copytree(template, sentinel / "copy", symlinks=True)
    (sentinel / "empty").mkdir()
    (sentinel / "victim.txt").write_bytes(b"must never change\n")
    legacy = world / "legacy"  # schema-0 files for import (read, never written)
    legacy.mkdir()
    (legacy / "imported.yaml").write_text("stage: discovered\ntitle: imported\n")
    return root, sentinel


def outside_state(world: Path, root: Path) -> dict[str, Any]:
    return tree_state(world, skip=root)


# --- crafted ids ----------------------------------------------------------------------------------


def crafted_ids(world: Path) -> list[str]:
    """Ids a caller (or a file name, or a URL) could smuggle a path into."""
    return [
        "..", ".", "../x", "../../sentinel", "../../../..", "a/../../x", "a/b", "..\\..\\x", "a\\b",
        "/abs", str(world / "sentinel" / "planted"), str(world / "abs-target"), "//server/share", "C:\\x", "c:x",
        "~", "~root", "$HOME", "%2e%2e", "..%2f..%2f", "%00", "x\x00y", "\x00", "ep\x00/../../x",
        "ep\n", "\nep", "ep\r", "ep\t", " ep", "ep ", "",
        # unicode lookalikes of letters, dots and slashes
        "\uff45\uff50001", "\u0435p001", "ep\u200b", "\u2024\u2024", "\u2025", "\uff0e\uff0e", "\u2215etc", "\u2044x",
        "\uff0fx", "ep\u202e", "e\u0301p", "\u212a", "stra\u00dfe", "\u0130", "\ufb01le", "\u2460",
        # very long (128 is the longest valid id)
        "a" * 128, "a" * 129, "a" * 255, "a" * 256, "a" * 4096, "a" * 100_000, "a/" * 2000,
        # Windows device names and other names a share refuses
        "con", "nul", "aux", "prn", "com1", "com9", "lpt1", "lpt9", "con.txt", "nul.yaml", "aux.v2", "CON", "Nul",
        "conin$", "clock$", "ep:stream", "ep.", "ep..", "a..b",
        # shell and option lookalikes
        "-rf", "--help", "-", "ep;touch x", "$(touch x)", "`touch x`", "ep|x", "ep*", "ep?", "[ep]",
    ]


def id_operations(store: Store, legacy: Path) -> dict[str, Callable[[str], Any]]:
    """Every public call that takes an id, the crafted one in each position."""
    ops: dict[str, Callable[[str], Any]] = {}
    for where in ("show", "ep"):
        def ref(bad: str, where: str = where) -> tuple[str, str]:
            return (bad, EP) if where == "show" else (SHOW, bad)

        ops.update({
            f"create({where})": lambda b, ref=ref: store.create(*ref(b), title="x"),
            f"get({where})": lambda b, ref=ref: store.get(*ref(b)),
            f"events({where})": lambda b, ref=ref: store.events(*ref(b)),
            f"advance({where})": lambda b, ref=ref: store.advance(*ref(b), "downloaded"),
            f"update({where})": lambda b, ref=ref: store.update(*ref(b), title="y"),
            f"save_checkpoint({where})": lambda b, ref=ref: store.save_checkpoint(*ref(b), CHECKPOINT_STAGE, {"a": 1}),
            f"load_checkpoint({where})": lambda b, ref=ref: store.load_checkpoint(*ref(b), CHECKPOINT_STAGE),
            f"backups({where})": lambda b, ref=ref: store.backups(*ref(b)),
            f"restore({where})": lambda b, ref=ref: store.restore(*ref(b)),
            f"retry_now({where})": lambda b, ref=ref: store.retry_now(*ref(b), by="x"),
            f"run({where})": lambda b, ref=ref: _enter_run(store, *ref(b), "downloading"),
            f"delete({where})": lambda b, ref=ref: store.delete(*ref(b)),
        })
    ops.update({
        "advance(stage)": lambda b: store.advance(SHOW, "other", b),
        "save_checkpoint(stage)": lambda b: store.save_checkpoint(SHOW, EP, b, {"a": 1}),
        "load_checkpoint(stage)": lambda b: store.load_checkpoint(SHOW, EP, b),
        "run(stage)": lambda b: _enter_run(store, SHOW, "other", b),
        "approve(stage)": lambda b: store.approve(SHOW, EP, b, by="x"),
        "next(stage)": lambda b: store.next(b),
        "list(stage)": lambda b: store.list(stage=b),
        "create_show": lambda b: store.create_show(b, title="x"),
        "get_show": lambda b: store.get_show(b),
        "list(show)": lambda b: store.list(show=b),
        "counts(show)": lambda b: store.counts(show=b),
        "costs(show)": lambda b: store.costs(show=b),
        "with_errors(show)": lambda b: store.with_errors(show=b),
        "stuck(show)": lambda b: store.stuck(timedelta(0), show=b),
        "import(show)": lambda b: store.import_legacy(legacy, b),
    })
    return ops


def _enter_run(store: Store, show: str, ep: str, stage: str) -> None:
    with store.run(show, ep, stage, owner="attacker", reraise=False) as run:
        run.checkpoint({"x": 1})


def test_crafted_ids_never_reach_outside_the_root(template: Path, tmp_path: Path) -> None:
    world = tmp_path / "world"
    root, _sentinel = make_world(template, world)
    legacy = world / "legacy"
    (legacy / "old.yaml").write_text("episode_id: ../../../escaped\nstage: discovered\ntitle: old\n")
    (legacy / "evil.yaml").write_text(f"episode_id: {world / 'abs-target'}\nstage: discovered\n")
    parent_before = tree_state(tmp_path.parent, skip=root, content=False)
    before = outside_state(world, root)
    store = Store.open(root, lock_timeout=1)
    calls = Calls()
    ids = crafted_ids(world)
    ops = id_operations(store, legacy)
    accepted: Counter[str] = Counter()
    for bad in ids:
        for name, op in ops.items():
            result = calls(f"{name} {bad[:40]!r}", lambda op=op, bad=bad: op(bad))
            if not isinstance(result, Exception):
                accepted[name] += 1
            elif isinstance(result, StatekitError) and not isinstance(result, InvalidIdError) and not _valid(bad):
                calls.failures.append(f"{name} {bad[:40]!r}: {type(result).__name__}, not InvalidIdError: "
                                      f"{result.one_line()[:150]}")
        if outside_state(world, root) != before:
            calls.failures.append(f"id {bad[:60]!r} changed something outside the root")
            before = outside_state(world, root)
    store.close()
    assert tree_state(tmp_path.parent, skip=root, content=False) == parent_before, "new files beside the root"
    # the valid ids worked, inside the root: created, then deleted into the root's own trash
    valid = [b for b in ids if _valid(b) and not b.startswith(("con", "nul", "aux", "prn", "com", "lpt"))]
    assert valid and accepted["create(ep)"] == len(valid) and accepted["delete(ep)"] == len(valid), accepted
    trashed = os.listdir(Path(root, ".statekit", "trash", SHOW))
    assert all(any(name.startswith(v + ".") for name in trashed) for v in valid), trashed
    record("security-ids", {"ids": len(ids), "operations": len(ops), "calls": len(ids) * len(ops),
                            "outcomes": dict(calls.outcomes), "accepted_valid_ids": sum(accepted.values()),
                            "failures": len(calls.failures)})
    assert not calls.failures, "\n".join(calls.failures[:40])


def _valid(value: str) -> bool:
    from statekit.ids import ID_PATTERN

    return bool(ID_PATTERN.fullmatch(value))


def test_crafted_ids_through_the_cli(template: Path, tmp_path: Path) -> None:
    world = tmp_path / "world"
    root, _sentinel = make_world(template, world)
    usable = [b for b in crafted_ids(world) if "\x00" not in b and len(b) < 5000]
    commands: list[tuple[str, ...]] = []
    for bad in usable:
        commands += [("create", f"{bad}/{EP}"), ("create", f"{SHOW}/{bad}"), ("show", f"{SHOW}/{bad}"),
                     ("advance", f"{SHOW}/other", bad), ("list", "--show", bad), ("restore", f"{bad}/{EP}", "--list"),
                     ("list", "--stage", bad), ("next", bad)]
    if not STRESS:  # the fast tier: a traversal and a lookalike; the full tier: a spread of 64
        commands = [("create", f"../../sentinel/{EP}"), ("show", f"{SHOW}/\u2024\u2024")]
    else:
        commands = commands[:: max(1, len(commands) // 64)][:64]
    before = outside_state(world, root)
    parent_before = tree_state(tmp_path.parent, skip=root, content=False)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: statekit(root, *args, cwd=world), commands))
    failures = [p for done in results for p in cli_problems(done, only_statekit_lines=False)]
    codes = Counter(done.code for done in results)
    assert outside_state(world, root) == before, "the CLI changed something outside the root"
    assert tree_state(tmp_path.parent, skip=root, content=False) == parent_before, "new files beside the root"
    record("security-ids-cli", {"runs": len(results), "exit_codes": dict(codes), "failures": len(failures)})
    assert not failures, "\n".join(failures[:40])
    assert codes[2] >= len(results) // 2


# --- symlinks planted inside the store ---------------------------------------------------------------

# where the link goes (inside the store) -> what it points to (in the sentinel folder)
PLANTS: dict[str, tuple[str, str]] = {
    "episode-dir": (f"shows/{SHOW}/episodes/{EP}", f"copy/shows/{SHOW}/episodes/{EP}"),
    "episodes-dir": (f"shows/{SHOW}/episodes", f"copy/shows/{SHOW}/episodes"),
    "show-dir": (f"shows/{SHOW}", f"copy/shows/{SHOW}"),
    "shows-dir": ("shows", "copy/shows"),
    "episode-file": (f"shows/{SHOW}/episodes/{EP}/episode.yaml", f"copy/shows/{SHOW}/episodes/{EP}/episode.yaml"),
    "events-file": (f"shows/{SHOW}/episodes/{EP}/events.jsonl", f"copy/shows/{SHOW}/episodes/{EP}/events.jsonl"),
    "checkpoints-dir": (f"shows/{SHOW}/episodes/{EP}/checkpoints", f"copy/shows/{SHOW}/episodes/{EP}/checkpoints"),
    "checkpoint-file": (f"shows/{SHOW}/episodes/{EP}/checkpoints/{CHECKPOINT_STAGE}.json",
                        f"copy/shows/{SHOW}/episodes/{EP}/checkpoints/{CHECKPOINT_STAGE}.json"),
    "show-yaml": (f"shows/{SHOW}/show.yaml", f"copy/shows/{SHOW}/show.yaml"),
    "backup-dir": (f".statekit/backups/episodes/{SHOW}/{EP}", f"copy/.statekit/backups/episodes/{SHOW}/{EP}"),
    "backups-show-dir": (f".statekit/backups/episodes/{SHOW}", f"copy/.statekit/backups/episodes/{SHOW}"),
    "backups-dir": (".statekit/backups", "copy/.statekit/backups"),
    "backup-file": (f".statekit/backups/episodes/{SHOW}/{EP}/episode.v7.yaml", "victim.txt"),
    "locks-dir": (".statekit/locks", "empty"),
    "locks-show-dir": (f".statekit/locks/episodes/{SHOW}", "empty"),
    "lock-file": (f".statekit/locks/episodes/{SHOW}/{EP}.lock", "victim.txt"),
    "show-lock-file": (f".statekit/locks/shows/{SHOW}.lock", "victim.txt"),
    "index-lock-file": (".statekit/locks/index.lock", "victim.txt"),
    "trash-dir": (".statekit/trash", "empty"),
    "trash-show-dir": (f".statekit/trash/{SHOW}", "empty"),
    "statekit-dir": (".statekit", "copy/.statekit"),
    "index-db": (".statekit/index.db", "copy/.statekit/index.db"),
    "errors-log": (".statekit/errors.jsonl", "victim.txt"),
    "config": ("statekit.yaml", "copy/statekit.yaml"),
}


# the fast tier: the places the issue names, and the index's
FAST_PLANTS = ("episode-dir", "episodes-dir", "events-file", "checkpoints-dir", "backup-dir", "backups-dir",
               "locks-dir", "trash-dir", "statekit-dir", "index-db", "episode-file", "shows-dir")


def plant_link(root: Path, sentinel: Path, name: str) -> Path:
    inside, target = PLANTS[name]
    link = root / inside
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(sentinel / target, target_is_directory=(sentinel / target).is_dir())
    return link


def attack(root: Path, world: Path, calls: Calls) -> None:
    """Every kind of write (and the reads around them) against a store with a planted link."""
    opened = calls("Store.open", lambda: Store.open(root, lock_timeout=1))
    if isinstance(opened, Exception):
        return
    store: Store = opened
    legacy = world / "legacy"
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("get", lambda: store.get(SHOW, EP)),
        ("events", lambda: store.events(SHOW, EP)),
        ("load_checkpoint", lambda: store.load_checkpoint(SHOW, EP, CHECKPOINT_STAGE)),
        ("advance", lambda: store.advance(SHOW, EP, "downloaded")),
        ("update", lambda: store.update(SHOW, EP, title="through the link?")),
        ("save_checkpoint", lambda: store.save_checkpoint(SHOW, EP, CHECKPOINT_STAGE, {"new": True})),
        ("create", lambda: store.create(SHOW, "new", title="new")),
        ("create other show", lambda: store.create("u", "new")),
        ("create_show", lambda: store.create_show("v", title="v")),
        ("failed run", lambda: _failing_run(store)),
        ("recover", store.recover),
        ("retry_now", lambda: store.retry_now(SHOW, "other", by="x")),
        ("backups", lambda: store.backups(SHOW, EP)),
        ("restore", lambda: store.restore(SHOW, EP)),
        ("hand edit then sync", lambda: _hand_edit_and_sync(store, root)),
        ("verify", store.verify),
        ("rebuild_index", store.rebuild_index),
        ("repair", store.repair),
        ("gc", lambda: store.gc(backups_older_than=timedelta(0))),
        ("migrate", store.migrate),
        ("import_legacy", lambda: store.import_legacy(legacy, SHOW)),
        ("delete", lambda: store.delete(SHOW, EP)),
        ("delete other", lambda: store.delete("t", "x")),
        ("list", store.list),
        ("status", store.status),
    ]
    for label, fn in steps:
        calls(label, fn)
    store.close()


def _failing_run(store: Store) -> None:
    with store.run(SHOW, "other", "downloading", owner="attacker", reraise=False):
        raise ConnectionError("fails, so errors.jsonl gets a line")


def _hand_edit_and_sync(store: Store, root: Path) -> Any:
    path = root / "shows" / "t" / "episodes" / "x" / "episode.yaml"
    if path.resolve() == path:  # a person edits inside the store, not through a planted link
        path.write_text(path.read_text().replace("title: t/x", "title: edited  # by hand"))
    return store.sync()


@pytest.mark.parametrize("name", list(PLANTS) if STRESS else FAST_PLANTS)
def test_a_planted_symlink_is_never_followed_outside_the_root(template: Path, tmp_path: Path, name: str) -> None:
    world = tmp_path / "world"
    root, sentinel = make_world(template, world)
    link = plant_link(root, sentinel, name)
    before = outside_state(world, root)
    parent_before = tree_state(tmp_path.parent, skip=world, content=False)
    calls = Calls()
    attack(root, world, calls)
    if STRESS or name in ("episode-dir", "index-db"):  # the CLI too (the fast tier: two plants, two commands)
        commands = [("verify",), ("show", f"{SHOW}/{EP}"), ("sync",), ("advance", f"{SHOW}/{EP}", "downloaded"),
                    ("repair",)]
        with ThreadPoolExecutor(2) as pool:
            for done in pool.map(lambda args: statekit(root, *args), commands[: size(2, 4)]):
                calls.failures += cli_problems(done, only_statekit_lines=False)
    after = outside_state(world, root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{name}: written outside the root: {changed[:10]}"
    assert tree_state(tmp_path.parent, skip=world, content=False) == parent_before, "new files beside the world"
    assert link.is_symlink() or not link.exists(), "the planted link was replaced by what it pointed to"
    record("security-symlinks", {"calls": sum(calls.outcomes.values()), "outcomes": dict(calls.outcomes),
                                 "failures": len(calls.failures)}, case=name)
    assert not calls.failures, "\n".join(calls.failures[:40])


# --- YAML tags: no code runs ------------------------------------------------------------------------------


def tag_payloads(marker: Path) -> dict[str, str]:
    """YAML that would create ``marker`` if any loader ran it."""
    m = str(marker)
    return {
        "os.system": f'!!python/object/apply:os.system ["touch {m}"]',
        "subprocess": f'!!python/object/apply:subprocess.check_call [["touch", "{m}"]]',
        "popen": f'!!python/object/new:subprocess.Popen [["touch", "{m}"]]',
        "exec": f"!!python/object/apply:builtins.exec [\"open('{m}', 'w').close()\"]",
        "eval": f"!!python/object/apply:builtins.eval [\"open('{m}', 'w')\"]",
        "verbatim": f"!<tag:yaml.org,2002:python/object/apply:os.system> [\"touch {m}\"]",
        "name": "!!python/name:os.system",
        "module": "!!python/module:os",
        "object": "!!python/object:os.system {}",
        "ruamel": f"!!python/object/apply:os.system ['touch {m}']  # comment, for the round trip",
    }


def test_yaml_tags_never_run_code(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = tmp_path / "world"
    root, _sentinel = make_world(template, world)
    marker = world / "CODE-RAN"
    monkeypatch.chdir(world)
    payloads = tag_payloads(marker)
    if not STRESS:  # the fast tier: three of the ten
        payloads = {k: payloads[k] for k in ("os.system", "exec", "ruamel")}
    before = outside_state(world, root)
    calls = Calls()
    store = Store.open(root)
    episode = root / "shows" / SHOW / "episodes" / EP / "episode.yaml"
    show_yaml = root / "shows" / SHOW / "show.yaml"
    config = root / "statekit.yaml"
    originals = {p: p.read_bytes() for p in (episode, show_yaml, config)}
    tried = 0
    for tag, payload in payloads.items():
        for path, line in ((episode, f"title: {payload}\n"), (episode, f"metadata:\n  x: {payload}\n"),
                           (show_yaml, f"title: {payload}\n"), (config, f"lock_timeout: {payload}\n")):
            text = originals[path].decode()
            key = line.split(":", 1)[0]
            lines = [ln for ln in text.splitlines(keepends=True) if not ln.startswith(key + ":")]
            path.write_text("".join(lines) + line)
            tried += 1
            calls("open", lambda: Store.open(root).close())
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("get", lambda: store.get(SHOW, EP)), ("advance", lambda: store.advance(SHOW, EP, "downloaded")),
                ("sync", store.sync), ("verify", store.verify), ("repair", store.repair),
                ("create", lambda n=tried: store.create(SHOW, f"n{n}")), ("get_show", lambda: store.get_show(SHOW))]
            for label, fn in steps:
                calls(f"{tag} in {path.name}: {label}", fn)
            assert not marker.exists(), f"a {tag} tag in {path.name} ran code"
            for p, raw in originals.items():  # the next attack starts from the intact files
                p.write_bytes(raw)
            calls("sync", store.sync)
    # a pipeline file, a legacy import, and the CLI
    pipeline = world / "pipeline.yaml"
    legacy = world / "legacy"
    for i, (tag, payload) in enumerate(payloads.items()):
        pipeline.write_text(f"pipeline:\n  name: {payload}\n  initial: a\n  stages: {{a: []}}\n")
        calls(f"init with a {tag} pipeline", lambda i=i: Store.init(world / f"new{i}", pipeline=pipeline))
        (legacy / f"ep{i}.yaml").write_text(f"stage: discovered\ntitle: {payload}\n")
        tried += 2
    calls("import", lambda: store.import_legacy(legacy, "imported"))
    store.close()
    cli = [("init", str(world / "cli-store"), "--pipeline", str(pipeline)), ("import", str(legacy), "--show", "imp")]
    episode.write_text(originals[episode].decode() + f"metadata:\n  x: {payloads['os.system']}\n")
    cli += [("show", f"{SHOW}/{EP}"), ("sync",)]
    with ThreadPoolExecutor(2) as pool:
        for done in pool.map(lambda args: statekit(root, *args, cwd=world), cli if STRESS else cli[1:3]):
            calls.failures += cli_problems(done, only_statekit_lines=False)
            tried += 1
    assert not marker.exists(), "a YAML tag ran code"
    after = outside_state(world, root)
    ours = ("legacy", "pipeline.yaml", "new", "cli-store")  # what this test wrote itself
    new = sorted(k for k in set(after) - set(before) if not k.startswith(ours))
    assert not new and all(after[k] == v for k, v in before.items()), f"changed outside the root: {new}"
    record("security-tags", {"inputs": tried, "outcomes": dict(calls.outcomes), "failures": len(calls.failures)})
    assert not calls.failures, "\n".join(calls.failures[:40])


# --- regression tests: one for each escape these tests found -------------------------------------------


def test_regression_gc_never_deletes_through_a_symlinked_backups_folder(template: Path, tmp_path: Path) -> None:
    """gc listed .statekit/backups/episodes through a symlinked .statekit/backups
    and unlinked the old backups it found there: files outside the root."""
    from statekit import UnsafePathError

    world = tmp_path / "world"
    root, sentinel = make_world(template, world)
    plant_link(root, sentinel, "backups-dir")
    before = outside_state(world, root)
    store = Store.open(root)
    with pytest.raises(UnsafePathError):
        store.gc(backups_older_than=timedelta(0))
    store.close()
    assert outside_state(world, root) == before
    assert len(list((sentinel / "copy/.statekit/backups/episodes/s/e").iterdir())) == 3


@pytest.mark.parametrize("name", ["statekit-dir", "index-db"])
def test_regression_the_index_is_never_opened_through_a_symlink(template: Path, tmp_path: Path, name: str) -> None:
    """SQLite follows symlinks: a symlinked .statekit (or index.db) had every
    sync and write update a database outside the root."""
    from statekit import UnsafePathError

    world = tmp_path / "world"
    root, sentinel = make_world(template, world)
    plant_link(root, sentinel, name)
    before = outside_state(world, root)
    with pytest.raises(UnsafePathError, match="symlink"):
        Store.open(root)
    assert outside_state(world, root) == before  # (the CLI's one-line refusal: the planted-symlink test)
