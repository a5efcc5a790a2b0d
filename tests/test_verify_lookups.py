"""The lookups a full ``verify`` makes without an exception against the plain ones that make one.

``index/scan:episode_file`` asks whether ``episode.yaml`` is there with ``os.access``, and
``index/verified:kept_files`` whether the checkpoints folder is; ``index/verify:_stranding``
answers ``graphs.stranding`` once per question; ``index/compare:Dumped`` reads a field as an
attribute. Each is compared with its plain form on every kind of entry a folder may hold.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from statekit import Store, packed
from statekit.errors import StatekitError
from statekit.graphs import stranding
from statekit.index import compare, scan, verified
from statekit.index import verify as verify_module
from statekit.index.verify import verify

KINDS = ("missing", "file", "folder", "symlink", "dangling symlink", "fifo")


def _make(path: Path, kind: str) -> None:
    if kind == "file":
        path.write_bytes(b"{}")
    elif kind == "folder":
        path.mkdir()
    elif kind == "symlink":
        path.with_name(path.name + ".target").write_bytes(b"{}")
        path.symlink_to(path.with_name(path.name + ".target"))
    elif kind == "dangling symlink":
        path.symlink_to(path.with_name("nowhere"))
    elif kind == "fifo":
        os.mkfifo(path)


def _plain_episode_file(base: str) -> tuple[str, os.stat_result] | None:
    """``episode_file`` as it was: an ``lstat`` of each name, YAML first."""
    for path in (base + "yaml", base + "json"):
        try:
            return path, os.lstat(path)
        except FileNotFoundError:
            continue
    return None


def _outcome(call: object, *args: object) -> object:
    try:
        found = call(*args)  # type: ignore[operator]
    except OSError as exc:
        return type(exc), exc.errno, exc.filename
    return None if found is None else (found[0], found[1].st_ino, found[1].st_mode)


@pytest.mark.parametrize("yaml_kind", KINDS)
@pytest.mark.parametrize("json_kind", KINDS)
def test_episode_file_finds_what_an_lstat_of_each_name_finds(tmp_path: Path, yaml_kind: str, json_kind: str) -> None:
    folder = tmp_path / "ep"
    folder.mkdir()
    _make(folder / "episode.yaml", yaml_kind)
    _make(folder / "episode.json", json_kind)
    base = f"{folder}/episode."
    assert _outcome(scan.episode_file, base) == _outcome(_plain_episode_file, base)


@pytest.mark.parametrize("where", ["no folder", "a file in place of the folder", "a symlink in the path"])
def test_episode_file_where_the_folder_is_not_one(tmp_path: Path, where: str) -> None:
    """Lookups that fail for another reason than a missing name: the YAML file's error, as before."""
    if where == "no folder":
        base = f"{tmp_path}/gone/episode."
    elif where == "a file in place of the folder":
        (tmp_path / "ep").write_bytes(b"")
        base = f"{tmp_path}/ep/episode."
    else:
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        base = f"{tmp_path}/loop/episode."
    assert _outcome(scan.episode_file, base) == _outcome(_plain_episode_file, base)


def _plain_kept_files(root: str, show: str, ep: str, directory: str, backed_up: bool = True) -> bytes:
    """``kept_files`` as it was: ``_folder``'s ``lstat`` of the checkpoints folder."""
    h = hashlib.blake2b(digest_size=32)
    verified._folder(h, directory + "/checkpoints")
    if backed_up:
        verified._folder(h, f"{root}/.statekit/backups/episodes/{show}/{ep}")
    else:
        verified._put(h, None)
    return h.digest()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backed_up", [True, False])
def test_kept_files_digests_what_an_lstat_finds(tmp_path: Path, kind: str, backed_up: bool) -> None:
    folder = tmp_path / "shows" / "s" / "episodes" / "e"
    folder.mkdir(parents=True)
    (folder / "episode.json").write_bytes(b"{}")
    _make(folder / "checkpoints", kind)
    if kind == "folder":
        (folder / "checkpoints" / "downloading.json").write_bytes(b"{}")
    args = (str(tmp_path), "s", "e", str(folder), backed_up)
    assert verified.kept_files(*args) == _plain_kept_files(*args)
    assert (verified.kept_files(*args) == verified.NOTHING_KEPT) == (kind == "missing")  # (no backups here)


def test_stranding_once_per_question_is_stranding(tmp_path: Path) -> None:
    """Each answer is ``graphs.stranding``'s for the same graphs, whichever were asked before."""
    store = Store.init(tmp_path / "store")
    new = store.writer.pipeline
    # (no "downloaded", and no way on from "downloading" or "failed": many answers differ by graph and by done)
    other = new.model_copy(update={"stages": {**{k: v for k, v in new.stages.items() if k != "downloaded"},
                                              "downloading": (), "failed": ("skipped",)}})
    verify_module._STRANDINGS.clear()
    answers = set()
    for old in (None, new, other, None, other, new):
        for p in (new, other):
            for stage in [*new.stages, "gone"]:
                for previous in (None, "downloading", "converting", "gone"):
                    for done in (False, True):
                        why = stranding(p, stage, previous, done=done, old=old)
                        assert verify_module._stranding(p, stage, previous, done, old) == why, (stage, previous, done)
                        answers.add((stage, previous, done, why))
    assert verify_module._STRANDINGS
    assert {(s, p, w) for s, p, d, w in answers if d} != {(s, p, w) for s, p, d, w in answers if not d}


def test_a_dumped_episode_reads_as_its_model(tmp_path: Path) -> None:
    """Every field ``Dumped`` gives is the model's (the model's own JSON form of it), ``priority``
    given or left out, and a name that is no field is no attribute."""
    store = Store.init(tmp_path / "store", format="json")
    store.create("s", "a", title="A", metadata={"k": [1, 2]})
    store.create("s", "b", title="B")
    store.prioritize("s", "b", 3)
    for ep in ("a", "b"):
        model = store.get("s", ep)
        data = model.model_dump(mode="json")
        assert ("priority" in data) == (ep == "b")
        dumped = compare.Dumped(data)
        for name in type(model).model_fields:
            assert getattr(dumped, name) == data.get(name, 0) == model.model_dump(mode="json").get(name, 0), name
        assert dumped.key == model.key and dumped.model_dump() is data
        with pytest.raises(AttributeError):
            dumped.no_such_field  # noqa: B018


def test_a_json_store_with_a_yaml_file_and_a_checkpoint(tmp_path: Path) -> None:
    """A full verify finds the YAML file of a folder that holds both, and the checkpoint folder."""
    store = Store.init(tmp_path / "store", format="json")
    store.create("s", "a", title="A")
    store.create("s", "b", title="B")
    store.advance("s", "b", "downloading")
    store.save_checkpoint("s", "b", "downloading", {"part": 1})
    folder = Path(store.root, "shows", "s", "episodes", "a")
    (folder / "episode.yaml").write_text("not: [an episode\n")
    report = verify(store.writer, full=True, workers=1)
    assert report.checkpoints == 1 and report.checked == 2
    assert [p.path for p in report.problems if p.kind == "invalid"] == [str(folder / "episode.yaml")]


# --- the memo written as the merge goes, against save -----------------------------------------


def _memo_rows(root: Path) -> object:
    path = verified.memo_path(str(root))
    if not os.path.exists(path):
        return None
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall(),
                conn.execute("SELECT episode, digest, result FROM clean ORDER BY episode").fetchall())
    except sqlite3.DatabaseError as exc:
        return f"damaged: {exc}"
    finally:
        conn.close()


def _entries(n: int, salt: bytes) -> dict[str, tuple[bytes, bytes]]:
    return {f"s/e{i}": (hashlib.sha256(salt + i.to_bytes(4, "little")).digest(), b"r" + salt) for i in range(n)}


def _memo_case(case: str, root: Path) -> tuple[bytes, dict[str, tuple[bytes, bytes]], dict[str, tuple[bytes, bytes]]]:
    """(fingerprint, before, clean) of a case, the memo file made as ``before`` was read from it."""
    (root / ".statekit").mkdir(parents=True)
    print_ = b"p" * 32
    old = _entries(6, b"a")
    if case == "fresh":
        return print_, {}, _entries(5, b"a")
    if case == "fresh, many":  # (more than ``Streamed`` hands over at a time)
        return print_, {}, _entries(1300, b"a")
    if case == "nothing clean, nothing before":
        return print_, {}, {}
    verified.save(str(root), print_ if case not in ("another fingerprint", "rewritten since read") else b"q" * 32,
                  {}, old)
    if case == "damaged file":
        Path(verified.memo_path(str(root))).write_bytes(b"not a database" * 100)
    if case == "symlinked":
        memo = Path(verified.memo_path(str(root)))
        memo.rename(root / "elsewhere.db")
        memo.symlink_to(root / "elsewhere.db")
    before = old if case not in ("another fingerprint", "damaged file") else {}
    clean = dict(old)
    if case in ("some changed, some gone", "another fingerprint", "damaged file", "symlinked",
                "rewritten since read"):
        clean["s/e1"] = (b"x" * 32, b"changed")
        del clean["s/e4"]
        clean["s/new"] = (b"y" * 32, b"added")
    elif case == "some gone only":
        del clean["s/e0"]
    return print_, before, clean


MEMO_CASES = ("fresh", "nothing clean, nothing before", "nothing changed", "some changed, some gone",
              "some gone only", "another fingerprint", "damaged file", "symlinked", "rewritten since read")
"""(``rewritten since read``: ``before`` read under this fingerprint, the file since written under another:
every result is written, those that came before the first changed one too.)"""


@pytest.mark.parametrize("case", MEMO_CASES)
@pytest.mark.parametrize("batch", [1, 2, 100])
def test_the_memo_streamed_is_the_memo_saved(tmp_path: Path, case: str, batch: int) -> None:
    """``_stream`` (given its batches) and then, if it did not write it all, ``save``: the same file
    as ``save`` alone makes, from the same start; nothing written where ``save`` writes nothing."""
    plain, streamed = tmp_path / "plain", tmp_path / "streamed"
    print_, before, clean = _memo_case(case, plain)
    _memo_case(case, streamed)
    verified.save(str(plain), print_, before, clean)
    items = list(clean.items())
    batches = iter([items[i:i + batch] for i in range(0, len(items), batch)] + [verified._DONE])
    stamp = os.stat(verified.memo_path(str(streamed)), follow_symlinks=False) \
        if os.path.lexists(verified.memo_path(str(streamed))) else None
    ended, done = verified._stream(str(streamed), print_, before, clean, batches)
    assert ended is verified._DONE
    if not done:
        verified.save(str(streamed), print_, before, clean)
    assert _memo_rows(streamed) == _memo_rows(plain)
    if case in ("nothing changed", "nothing clean, nothing before", "symlinked"):
        assert not done
    if case == "nothing changed":  # not written at all
        assert os.stat(verified.memo_path(str(streamed))).st_mtime_ns == stamp.st_mtime_ns  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["fresh", "fresh, many", "some changed, some gone"])
def test_the_memo_streamed_on_its_thread(tmp_path: Path, case: str) -> None:
    """``Streamed``: added one by one from this thread, the same file as ``save``'s; abandoned: nothing
    remembered (a fresh memo's file may be left made, empty, as by a ``save`` that failed)."""
    plain, streamed, abandoned = tmp_path / "plain", tmp_path / "streamed", tmp_path / "abandoned"
    print_, before, clean = _memo_case(case, plain)
    _memo_case(case, streamed)
    _memo_case(case, abandoned)
    start = _memo_rows(abandoned)
    verified.save(str(plain), print_, before, clean)
    for root in (streamed, abandoned):
        writing = verified.Streamed(str(root), print_, before, clean)
        for item in clean.items():
            writing.add(item)
        if root == streamed:
            writing.finish()
        else:
            writing.abandon()
        writing.join()
    assert _memo_rows(streamed) == _memo_rows(plain) != start
    assert _memo_rows(abandoned) == start or start is None and _memo_rows(abandoned) == ([], [])


# --- the log read with its stat, against read_either and an lstat -------------------------------


@pytest.mark.parametrize("kind", [*KINDS, "empty", "large", "compressed", "compressed and plain"])
def test_read_log_reads_what_read_either_reads_and_its_stat_is_the_lstat(tmp_path: Path, kind: str) -> None:
    """The bytes ``packed.read_either`` gives (or "cannot be read" where it raises), and a stat that
    ``_link`` judges as it judges the log's ``lstat`` (None: the caller takes the ``lstat``)."""
    log = tmp_path / "events.jsonl"
    if kind in ("compressed", "compressed and plain"):
        Path(str(log) + ".gz").write_bytes(packed.pack(b'{"version": 1}\n'))
        if kind == "compressed and plain":
            log.write_bytes(b'{"version": 2}\n')
    elif kind == "empty":
        log.write_bytes(b"")
    elif kind == "large":
        log.write_bytes(b'{"v": 1}\n' * 40_000)
    else:
        _make(log, kind)
    try:
        plain: object = packed.read_either(str(log))
    except (StatekitError, OSError, ValueError):
        plain = "cannot be read"
    try:
        raw, st = verified.read_log(str(log))
    except (StatekitError, OSError, ValueError):
        raw, st = "cannot be read", None
    assert raw == plain
    if raw != "cannot be read":
        assert verify_module._link(str(log), st) == verify_module._link(str(log))
        assert (st is None) == (kind in ("missing", "compressed"))


def test_read_log_sees_a_second_name(tmp_path: Path) -> None:
    """A log with another name: the fstat counts it, as the lstat does."""
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"{}\n")
    os.link(log, tmp_path / "other")
    raw, st = verified.read_log(str(log))
    assert raw == b"{}\n" and st is not None and st.st_nlink == 2
    assert verify_module._link(str(log), st) == verify_module._link(str(log))
