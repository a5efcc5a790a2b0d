"""The fast paths of a full ``verify`` (``statekit/index/verify.py``) against the plain ones.

Each fast path has a plain form it must agree with exactly: ``eventlog.parse_log`` with
``lines_of`` and ``tail_of`` (same lines, same errors), ``eventlog.events_valid`` with
``validate_events`` (True only where it passes), ``verify.event_keys`` with the index rows
``event_rows`` derives, ``compare.row_same`` with ``same``, and the kept-files shortcut
(``_plain_shows``) with ``_verify_kept_files``. The last test damages a store in many ways
and asks a full verify with every fast path on and with every one off for the same report.
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from statekit import Store, eventlog, packed, parsing
from statekit.codecs import same
from statekit.errors import StatekitError
from statekit.graphs import stranding
from statekit.index import compare, verified
from statekit.index import verify as verify_module
from statekit.index.compare import EVENT_FIELDS, event_key, event_keys
from statekit.index.rows import json_doc
from statekit.index.scan import event_rows
from statekit.index.verify import verify

from .test_verify_lookups import _plain_episode_file
from .test_verify_memo import sql

# --- parse_log: lines_of and tail_of from one reading ------------------------------------------

_TEXT = st.text(alphabet="abz:{}[]\\\"é 0", max_size=6)
_AT = st.sampled_from(["2026-01-01T00:00:00.000000Z", "2026-02-30T00:00:00.000000Z", "2026-01-01T24:00:00.000000Z",
                       "0000-01-01T00:00:00.000000Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00",
                       "2026-01-01T00:00:00.000000", "2026-13-01T00:00:00.000000Z", "yesterday", "",
                       "2026-01-01T00:00:00.000000z", "2026-01-01 00:00:00.000000Z", "9999-12-31T23:59:59.999999Z"])


@st.composite
def events(draw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"version": draw(st.integers(-2, 8)), "at": draw(_AT), "kind": draw(_TEXT),
                             "show_id": "s", "episode_id": "e"}
    for key in ("from_stage", "to_stage", "message", "sha256", "stage"):
        if draw(st.booleans()):
            event[key] = draw(st.one_of(st.none(), _TEXT))
    if draw(st.booleans()):
        event["schema_version"] = draw(st.sampled_from([1, 2, 3, 0, True, None, "2", 2.0]))
    if draw(st.booleans()):
        event["cost"] = draw(st.one_of(st.none(), st.integers(0, 10), st.floats(0, 5, allow_nan=False),
                                       st.integers(2**62, 2**63 - 1)))
    if draw(st.booleans()):
        event["fields"] = draw(st.one_of(st.none(), st.lists(_TEXT, max_size=2), st.just([1]), st.just("title")))
    if draw(st.booleans()):
        event["doc"] = {"a": draw(st.lists(st.integers(0, 3), max_size=3)), "b": {"c": draw(_TEXT)}}
    if draw(st.integers(0, 9)) == 0:  # a field of the wrong type: the line is not an event
        event[draw(st.sampled_from(["version", "at", "cost", "kind"]))] = draw(st.sampled_from([True, "1", [], None]))
    return event


def _line(event: dict[str, Any], how: int) -> bytes:
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=how != 1).encode()
    if how == 2:  # a duplicate key
        text = text[:-1] + b',"kind":"dup"}'
    elif how == 3:  # an integer past 64 bits (or 19 digits that fit)
        text = text[:-1] + b',"big":18446744073709551616}'
    elif how == 4:
        text = text[:-1] + b',"n":1234567890123456789}'
    elif how == 5:  # a \\u escape spelling a colon, or a plain one
        text = text[:-1] + b',"u\\u003a":"\\u00e9"}'
    elif how == 6:  # not an object, or not JSON
        text = b"[1, 2]"
    elif how == 7:
        text = text[: len(text) // 2]
    elif how == 8:
        text = b""
    elif how == 9:  # nested deep
        text = text[:-1] + b',"deep":' + b"[" * 60 + b"]" * 60 + b"}"
    elif how == 10:  # digits in a text (a hash), after an escaped quote: no number
        text = text[:-1] + b',"h":"a\\\"12345678901234567890\\\\","n":12}'
    elif how == 11:  # a text ending in a backslash, then a long number
        text = text[:-1] + b',"h":"a\\\\","n":12345678901234567890}'
    return text


@st.composite
def logs(draw: Any) -> bytes:
    lines = [_line(draw(events()), draw(st.sampled_from([0] * 8 + list(range(1, 12))))) for _ in range(draw(
        st.integers(0, 5)))]
    tail = draw(st.sampled_from([b"", b'{"version":9', b"garbage", b'{"a":"b:c"}']))
    return b"\n".join(lines) + (b"\n" if lines else b"") + tail


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("ok", call())
    except StatekitError as exc:
        return ("error", type(exc), str(exc))


def _tail(found: tuple[Any, Any]) -> Any:
    return [None if t is None else (t.event, t.hash, t.end) for t in found]


@given(logs(), st.integers(0, 9))
def test_parse_log_reads_as_lines_of_and_tail_of(raw: bytes, committed: int) -> None:
    parsed = eventlog.parse_log(raw)
    if parsed is None:  # then verify reads it the plain way
        return
    assert _outcome(lambda: parsed.committed("log", committed)) == \
        _outcome(lambda: eventlog.lines_of(raw, "log", committed))
    assert _tail(parsed.tail()) == _tail(eventlog.tail_of(raw))
    last = eventlog.tail_of(raw)[0]
    assert parsed.last_event() == (last.event if last is not None else None)
    # hashed: the same events, each line's hash (before or after the tail hashed its lines), the same chain
    for fresh in (eventlog.parse_log(raw), parsed):
        assert fresh is not None
        plain = _outcome(lambda: eventlog.lines_of(raw, "log", committed))
        got = _outcome(lambda: fresh.hashed("log", committed))  # noqa: B023
        if plain[0] == "error":
            assert got == plain
            continue
        read = plain[1]
        assert got == ("ok", ([e for e, _r in read], [eventlog.line_hash(r) for _e, r in read]))
        lines, hashes = got[1]
        assert eventlog.chain_problems("log", lines, hashes=hashes) == \
            eventlog.chain_problems("log", lines, [r for _e, r in read])


def test_hashed_takes_a_whole_log_only_when_all_of_it_is_committed(tmp_path: Path) -> None:
    """``ParsedLog.hashed``'s short way (every line an event, versions up by one, the last committed)
    against ``lines_of`` for every committed version, an uncommitted last line among them."""
    store = _made(tmp_path / "store", "json")
    raw = _log(store, "a").read_bytes()
    for log in (raw, raw + raw.splitlines(keepends=True)[-1], raw.replace(b'"version":2,', b'"version":4,', 1)):
        for committed in range(0, 6):
            for fresh in (eventlog.parse_log(log), eventlog.parse_log(log)):
                assert fresh is not None
                if committed == 3:
                    fresh.tail()  # (its last lines hashed first)
                plain = _outcome(lambda: eventlog.lines_of(log, "log", committed))  # noqa: B023
                got = _outcome(lambda: fresh.hashed("log", committed))  # noqa: B023
                if plain[0] == "error":
                    assert got == plain
                else:
                    assert got == ("ok", ([e for e, _r in plain[1]], [eventlog.line_hash(r) for _e, r in plain[1]]))


def test_parse_log_takes_the_plain_log_of_a_store(tmp_path: Path) -> None:
    """The fast reading is the one in use (statekit's own logs are read by it)."""
    store = Store.init(tmp_path / "store")
    store.create("s", "e", title="T", metadata={"k": [1, {"a": "x:y"}]})
    store.advance("s", "e", "downloading", cost=0.5)
    raw = Path(store.root, "shows/s/episodes/e/events.jsonl").read_bytes()
    parsed = eventlog.parse_log(raw)
    assert parsed is not None and parsed.committed("log", 2) == eventlog.lines_of(raw, "log", 2)
    assert eventlog.parse_log(raw.replace(b'"kind":', b'"kind":"x","kind":', 1)) is None  # a duplicate key
    assert eventlog.parse_log(b"") is not None and eventlog.parse_log(None) is not None
    # orjson's own writing, escapes included (a control character), is read fast; a duplicate in it is not
    store.advance("s", "e", "downloaded", message="caf\u00e9 \x01 \\u003a")
    raw = Path(store.root, "shows/s/episodes/e/events.jsonl").read_bytes()
    assert b"\\u0001" in raw
    parsed = eventlog.parse_log(raw)
    assert parsed is not None and parsed.committed("log", 3) == eventlog.lines_of(raw, "log", 3)
    assert eventlog.parse_log(raw.replace(b'"kind":', b'"kind":"x","kind":', 1)) is None
    for n, fast in ((2**53 + 1, True), (2**63 - 1, False), (2**63, False), (2**64 - 1, False)):
        big = raw.replace(b'"kind":', b'"n":%d,"kind":' % n, 1)  # orjson's own writing still
        assert (eventlog.parse_log(big) is not None) == fast
        if fast:
            assert eventlog.parse_log(big).committed("log", 3) == eventlog.lines_of(big, "log", 3)  # type: ignore[union-attr]
    hashed = raw.replace(b'"kind":', b'"h":"0123456789012345678901234","kind":', 1)  # digits in a hash: read fast
    assert eventlog.parse_log(hashed) is not None and eventlog.parse_log(hashed.replace(b'"kind":', b'"n":1234567890'
                                                                                        b'012345678901,"kind":', 1)) is None


# --- events_valid: True only where validate_events passes ------------------------------------


@given(st.lists(events(), max_size=3))
def test_events_valid_only_where_validate_events_passes(lines: list[dict[str, Any]]) -> None:
    lines = [e for e in lines if eventlog._typed(e)]  # what read_lines gives
    if eventlog.events_valid(lines):
        eventlog.validate_events("log", lines)  # never raises


def test_events_valid_takes_statekit_lines() -> None:
    line = {"schema_version": 2, "version": 1, "at": "2026-01-01T00:00:00.123456Z", "kind": "create",
            "show_id": "s", "episode_id": "e", "to_stage": "a", "fields": ["title"], "doc": {}}
    assert eventlog.events_valid([line, {k: v for k, v in line.items() if k != "schema_version"}])
    for bad in ({"at": "2026-02-30T00:00:00.000000Z"}, {"schema_version": 3}, {"fields": [1]}, {"schema_version": True}):
        assert not eventlog.events_valid([{**line, **bad}])


# --- event_keys: the compared columns of event_rows ---------------------------------------------


@given(st.lists(events(), max_size=4))
def test_event_keys_are_those_of_the_index_rows(lines: list[dict[str, Any]]) -> None:
    lines = [e for e in lines if eventlog._typed(e)]
    plain = _outcome(lambda: [event_key([r[c] for c in EVENT_FIELDS]) for r in event_rows("log", lines, "s", "e")])
    assert _outcome(lambda: event_keys("log", lines)) == plain


# --- row_same: same, from the stored text ------------------------------------------------------


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                               st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=8)


@given(st.dictionaries(st.text(max_size=3), _JSON, max_size=4), st.dictionaries(st.text(max_size=3), _JSON,
                                                                                  max_size=4), st.booleans())
def test_row_same_is_same(a: dict[str, Any], b: dict[str, Any], equal: bool) -> None:
    stored = orjson.dumps(b if not equal else a).decode()
    assert compare.row_same(stored, a) == same(orjson.loads(stored), a)
    assert compare.row_same(orjson.loads(stored), a) == same(orjson.loads(stored), a)


_ANY = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=8)


@given(st.dictionaries(st.text(max_size=3), _ANY, max_size=4), st.dictionaries(st.text(max_size=3), _JSON, max_size=4),
       st.booleans())
def test_data_same_is_same(replayed: dict[str, Any], data: dict[str, Any], equal: bool) -> None:
    """(``data``, a checked model's, holds no non-finite number and no integer past 64 bits; ``replayed``,
    read from a log, no non-finite number: no reading of a log line takes one)"""
    if equal:
        replayed = orjson.loads(orjson.dumps(data))
    assert compare.data_same(replayed, data, compare.text_of(data)) == same(replayed, data)
    assert compare.data_same(replayed, data, None) == same(replayed, data)


# --- patches.apply: the usual operations without walking their pointers, any other by _apply_op ----

_KEY = st.sampled_from(["a", "b", "c", "", "0", "-", "x~1", "a/b"])
_POINTER = st.one_of(
    st.lists(st.sampled_from(["a", "b", "c", "", "0", "1", "-", "01", "~0", "~1", "x~"]), min_size=0, max_size=3)
    .map(lambda parts: "".join("/" + p for p in parts)),
    st.sampled_from(["a", "", "a/b", 3, None, ["/a"]]))
_OP = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(["add", "replace", "remove", "move", 1, None]), "path": _POINTER},
                          optional={"value": _JSON}),
    st.sampled_from([[], "add", None, 1, {"path": "/a", "value": 1}]))


_NO_POINTERS = defaultdict(lambda: None)
"""In place of ``patches._PLAIN_POINTERS``: no pointer taken the short way (every operation by ``_apply_op``)."""


@given(st.dictionaries(_KEY, st.one_of(_JSON, st.dictionaries(_KEY, _JSON, max_size=3)), max_size=4),
       st.one_of(st.lists(_OP, max_size=5), st.sampled_from([None, {}, "patch"])))
@example({"a": {}}, [{"op": "replace", "path": "/b", "value": 1}])  # a missing key: refused either way
@example({"a": {}}, [{"op": "replace", "path": "/a/b", "value": 1}])
@example({"a": [1]}, [{"op": "add", "path": "/a/0", "value": 2}])  # into a list: _apply_op
@example({"a": 1}, [{"op": "add", "path": 3, "value": 2}, {"op": "add", "path": ["/a"], "value": 2}])
def test_patch_in_place_is_apply(doc: dict[str, Any], patch: Any) -> None:
    from statekit import patches
    plain, fast = orjson.loads(orjson.dumps(doc)), orjson.loads(orjson.dumps(doc))
    ops, ops_fast = orjson.loads(orjson.dumps(patch)), orjson.loads(orjson.dumps(patch))

    def outcome(call: Callable[[], Any], data: dict[str, Any]) -> Any:
        try:
            call()
        except patches.PatchError as exc:
            return ("error", str(exc), orjson.dumps(data))
        return ("ok", orjson.dumps(data))

    def plain_way() -> None:  # every operation by _apply_op
        kept, patches._PLAIN_POINTERS = patches._PLAIN_POINTERS, _NO_POINTERS
        try:
            patches.apply(plain, ops, in_place=True, copy_values=False)
        finally:
            patches._PLAIN_POINTERS = kept

    assert outcome(lambda: patches.apply(fast, ops_fast, in_place=True, copy_values=False), fast) == \
        outcome(plain_way, plain)


def test_patch_in_place_takes_statekit_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast form is the one in use: a statekit patch never reaches ``patches._apply_op``."""
    from statekit import patches
    before = {"stage": "a", "costs": {"a": 1.0}, "attempts": {}, "title": "T", "error_history": []}
    after = {"stage": "b", "costs": {"a": 1.0, "b": 0.5}, "attempts": {"b": 1}, "title": "T two",
             "error_history": []}
    monkeypatch.setattr(patches, "_apply_op", None)
    patches.apply(before, patches.diff(before, after), in_place=True, copy_values=False)
    assert before == after


# --- a full verify of a damaged store: every fast path on, then off --------------------------


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "dumped_episode", lambda data: False)  # (every file checked by its model)
    monkeypatch.setattr(eventlog, "parse_log", lambda raw: None)
    monkeypatch.setattr(eventlog, "events_valid", lambda lines: False)
    monkeypatch.setattr(eventlog.patches, "_PLAIN_POINTERS", _NO_POINTERS)
    monkeypatch.setattr(verify_module, "_plain_shows", lambda root, shows: set())
    monkeypatch.setattr(verify_module, "row_same",
                        lambda stored, data, text=None: same(json_doc(stored), data))
    monkeypatch.setattr(verify_module, "data_same", lambda replayed, data, text: same(replayed, data))
    monkeypatch.setattr(verify_module, "_stranding", lambda new, stage, previous, done, old: stranding(
        new, stage, previous, done=done, old=old))
    monkeypatch.setattr(verify_module, "episode_file", _plain_episode_file)
    monkeypatch.setattr(verified, "_exists", lambda path, mode, follow_symlinks: True)  # (then _folder's lstat)
    monkeypatch.setattr(verified, "read_log", lambda path: (packed.read_either(path), None))  # (then an lstat)
    monkeypatch.setattr(verify_module, "event_keys", lambda log_path, lines: [
        event_key([r[c] for c in EVENT_FIELDS]) for r in event_rows(log_path, lines, "s", "x")])


def _made(root: Path, fmt: str) -> Store:
    store = Store.init(root, format=fmt)
    for ep in ("a", "b", "c", "d", "e"):
        store.create("s", ep, title=ep.upper(), metadata={"k": [1, 2]})
        store.advance("s", ep, "downloading", cost=0.25)
        store.update("s", ep, title=f"{ep} two")
    store.save_checkpoint("s", "b", "downloading", {"part": 1})
    store.create("t", "f", title="F")
    return store


def _log(store: Store, ep: str, show: str = "s") -> Path:
    return Path(store.root, "shows", show, "episodes", ep, "events.jsonl")


def _edit_line(store: Store, ep: str, number: int, change: Callable[[dict[str, Any]], None]) -> None:
    path = _log(store, ep)
    lines = path.read_bytes().splitlines(keepends=True)
    event = json.loads(lines[number])
    change(event)
    lines[number] = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def _raw_edit(store: Store, ep: str, old: bytes, new: bytes, count: int = 1) -> None:
    path = _log(store, ep)
    path.write_bytes(path.read_bytes().replace(old, new, count))


def _episode(store: Store, ep: str) -> Path:
    folder = Path(store.root, "shows", "s", "episodes", ep)
    return next(folder / name for name in ("episode.yaml", "episode.json") if (folder / name).exists())


DAMAGES: dict[str, Callable[[Store], None]] = {
    "nothing": lambda store: None,
    "a damaged line": lambda store: _raw_edit(store, "a", b'"kind":"advance"', b'"kind":advance'),
    "a torn last line": lambda store: _log(store, "a").write_bytes(_log(store, "a").read_bytes()[:-20]),
    "garbage after the last line": lambda store: _log(store, "c").write_bytes(
        _log(store, "c").read_bytes() + b"{\"version\": 9\n"),
    "a wrong prev": lambda store: _edit_line(store, "b", 2, lambda e: e.update(prev="0" * 64)),
    "a changed older line": lambda store: _edit_line(store, "c", 1, lambda e: e.update(message="forged")),
    "an illegal move": lambda store: _edit_line(store, "d", 1, lambda e: e.update(to_stage="published")),
    "a forged patch": lambda store: _edit_line(store, "d", 2, lambda e: e.update(
        patch=[{"op": "replace", "path": "/title", "value": "forged"}])),
    "a file unlike the log": lambda store: _episode(store, "e").write_bytes(
        _episode(store, "e").read_bytes().replace(b"e two", b"e three")),
    "a wrong sha256": lambda store: _edit_line(store, "a", 2, lambda e: e.update(sha256="0" * 64)),
    "a duplicate key": lambda store: _raw_edit(store, "b", b'"kind":', b'"kind":"x","kind":'),
    "a long number": lambda store: _raw_edit(store, "b", b'"version":2,', b'"version":2,"n":12345678901234567890,'),
    "a \\u escape": lambda store: _raw_edit(store, "c", b'"kind":"create"', b'"kind":"cr\\u0065ate"'),
    "a bad time": lambda store: _edit_line(store, "a", 1, lambda e: e.update(at="2026-02-30T00:00:00.000000Z")),
    "another time form": lambda store: _edit_line(store, "a", 1, lambda e: e.update(at="2026-01-01T00:00:00+00:00")),
    "a schema from the future": lambda store: _edit_line(store, "d", 2, lambda e: e.update(schema_version=9)),
    "fields not texts": lambda store: _edit_line(store, "e", 2, lambda e: e.update(fields=[1])),
    "a repeated line": lambda store: _log(store, "e").write_bytes(
        _log(store, "e").read_bytes() + _log(store, "e").read_bytes().splitlines(keepends=True)[-1]),
    "no log": lambda store: _log(store, "a").unlink(),
    "a changed index row": lambda store: sql(store, "UPDATE episodes SET data = json_set(data, '$.title', 'x') "
                                                     "WHERE episode_id = 'a'"),
    "a reordered index row": lambda store: sql(store, "UPDATE episodes SET data = json_remove(json_set(data, "
                                                       "'$.zz', 1), '$.zz') WHERE episode_id = 'b'"),
    "a changed indexed event": lambda store: sql(store, "UPDATE events SET message = 'x' WHERE episode_id = 'c'"),
    "a damaged checkpoint": lambda store: Path(store.root, "shows/s/episodes/b/checkpoints/downloading.json")
    .write_text("{}"),
    "a backup folder symlinked": lambda store: _symlinked(Path(store.root, ".statekit", "backups")),
    "a show's backups symlinked": lambda store: _symlinked(Path(store.root, ".statekit", "backups", "episodes", "t")),
    "a show's backups a file": lambda store: _filed(Path(store.root, ".statekit", "backups", "episodes", "t")),
    "an episodes folder symlinked": lambda store: _symlinked(Path(store.root, "shows", "t", "episodes")),
    "a folder without its file": lambda store: (_episode(store, "e").unlink(),
                                                Path(store.root, "shows", "s", "episodes", "zz").mkdir()),
    "a backup of another episode": lambda store: shutil.copytree(
        Path(store.root, ".statekit", "backups", "episodes", "s", "a"),
        Path(store.root, ".statekit", "backups", "episodes", "s", "zz")),
}


def _symlinked(path: Path) -> None:
    if path.exists():
        moved = path.with_name(path.name + "-real")
        path.rename(moved)
        path.symlink_to(moved)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(path.with_name("nowhere"))


def _filed(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_full_verify_reports_what_the_plain_paths_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            damage: str, fmt: str) -> None:
    store = _made(tmp_path / "store", fmt)
    DAMAGES[damage](store)
    fast = verify(store.writer, full=True, workers=1)
    with monkeypatch.context() as m:
        _slow(m)
        plain = verify(store.writer, full=True, workers=1)
    assert fast.problems == plain.problems
    assert (fast.checked, fast.checkpoints, fast.backups, fast.assets) == \
        (plain.checked, plain.checkpoints, plain.backups, plain.assets)
    assert bool(fast.problems) == (damage not in CLEAN), fast.problems


@pytest.mark.parametrize("damage", ["nothing", "a changed indexed event", "a forged patch"])
def test_a_pooled_verify_reports_what_the_plain_paths_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             damage: str) -> None:
    """In forked workers (their results pickled to the parent, which compares the index's events)."""
    store = _made(tmp_path / "store", "json")
    DAMAGES[damage](store)
    fast = verify(store.writer, full=True, workers=2)
    with monkeypatch.context() as m:
        _slow(m)
        plain = verify(store.writer, full=True, workers=1)
    assert fast.problems == plain.problems and fast.checked == plain.checked


CLEAN = ("nothing", "a reordered index row", "a backup of another episode", "a show's backups a file",
         "garbage after the last line")
"""Changes a verify finds nothing wrong with (an uncommitted tail is not a problem)."""


def test_verify_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    store = _made(tmp_path / "store", "json")
    assert gc.isenabled()
    assert store.verify(full=True).clean and gc.isenabled()
    gc.disable()
    try:
        assert store.verify(full=True).clean and not gc.isenabled()
    finally:
        gc.enable()


def test_verify_on_another_thread_never_touches_the_garbage_collector(tmp_path: Path) -> None:
    """A server verifying on a worker thread: the collector stays on for its other threads."""
    store = _made(tmp_path / "store", "json")
    seen: list[bool] = []
    real = gc.disable

    def watched() -> None:
        seen.append(True)
        real()

    gc.disable = watched  # type: ignore[assignment]
    try:
        done: list[bool] = []
        thread = threading.Thread(target=lambda: done.append(store.verify(full=True).clean))
        thread.start()
        thread.join()
        assert done == [True] and seen == [] and gc.isenabled()
        assert store.verify(full=True).clean and seen == [True] and gc.isenabled()  # the main thread's does
    finally:
        gc.disable = real  # type: ignore[assignment]


def test_folders_without_a_file_in_a_pool_and_in_one_process(tmp_path: Path) -> None:
    """Each folder's file is looked for by the worker that checks it: a folder without one is no
    episode (as the parent's walk had it), in a pool as in one process, memo cold or warm."""
    store = _made(tmp_path / "store", "json")
    _episode(store, "c").unlink()
    Path(store.root, "shows", "s", "episodes", "zz").mkdir()
    Path(store.root, "shows", "t", "episodes", "aa").mkdir()
    one = verify(store.writer, full=True, workers=1)
    pooled = verify(store.writer, full=True, workers=2)
    assert pooled == one and one.checked == 5
    assert [p.episode for p in one.problems if p.episode] == ["s/c"]  # in the index, its file gone (and totals)
    assert verify(store.writer, workers=2) == verify(store.writer, workers=1)


def test_the_memo_is_saved_on_a_helper_thread_before_verify_returns(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What is clean is written on a helper thread as the merge goes (``verified.Streamed``); verify
    returns once it is committed, and raises what the thread raised; ``verified.save`` does it all
    when the way there fails."""
    from statekit.index import verified
    store = _made(tmp_path / "store", "json")
    saved: list[str] = []
    real, real_save = verified._stream, verified.save
    monkeypatch.setattr(verified, "_stream", lambda *args: (saved.append(threading.current_thread().name),
                                                            real(*args))[1])
    assert verify(store.writer, full=True).clean and saved == ["statekit-verify-memo"]
    assert verify(store.writer).unchanged == 6

    def broken(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(verified, "_stream", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        verify(store.writer, full=True)
    # the way there fails with a database error: save writes it all, on the same thread
    monkeypatch.setattr(verified, "_stream", lambda root, print_, before, clean, batches: (verified._drain(batches),
                                                                                          False))
    monkeypatch.setattr(verified, "save", lambda *args: (saved.append(threading.current_thread().name),
                                                         real_save(*args)))
    Path(verified.memo_path(store.root)).unlink()
    saved.clear()
    assert verify(store.writer, full=True).clean and saved == ["statekit-verify-memo"]
    assert verify(store.writer).unchanged == 6
