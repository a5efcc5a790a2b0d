"""The rebuild's fast paths (issue 16) give exactly what the plain code gives:
event rows as tuples against ``event_rows_of``, an event line's type check against
its plain loop, the 19-digit test against its regex, the metadata check and the id
check against their slow forms."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit import Store
from statekit.codecs import has_long_number
from statekit.errors import InvalidIdError
from statekit.eventlog import _EVENT_OPTIONAL_TEXT, _EVENT_TEXT, _parse_event_line, read_events, read_lines
from statekit.ids import VALID_IDS, check_id
from statekit.index.rows import EVENT_COLUMNS, ISO, event_rows_of, event_values, from_iso, iso
from statekit.index.tables import events as events_table
from statekit.models import MAX_METADATA_DEPTH, _plain_checked, _plain_json, _plain_ok

_LONG_NUMBER = re.compile(rb"[0-9]{19}")
STAGES = st.sampled_from(["discovered", "downloading", "done", "x.y", "Bad", ""])
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(1 << 64), 1 << 64) | st.floats() | st.text(max_size=8)
TIMES = st.sampled_from(["2026-01-01T01:00:04.191325Z", "2026-01-01T01:00:04Z", "2026-01-01T02:00:04+01:00",
                         "2026-01-01T01:00:04.191325+00:00"])


@st.composite
def events(draw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"version": draw(st.integers(1, 50)), "at": draw(TIMES),
                             "show_id": draw(st.sampled_from(["s", "other"])),
                             "episode_id": draw(st.sampled_from(["e", "f"])), "kind": draw(st.sampled_from(
                                 ["create", "advance", "cost", "checkpoint"]))}
    for key in ("from_stage", "to_stage", "stage", "checkpoint", "message"):
        if draw(st.booleans()):
            event[key] = draw(STAGES | st.none())
    if draw(st.booleans()):
        event["cost"] = draw(st.none() | st.integers(0, 5) | st.floats(0, 5))
    if draw(st.booleans()):
        event["patch"] = [{"op": "replace", "path": "/title", "value": draw(st.text(max_size=5))}]
    if draw(st.booleans()):
        event["doc"] = {"title": draw(st.text(max_size=5)), "stage": "discovered"}
    return dict(draw(st.permutations(list(event.items()))))  # the ledger's keys anywhere in the line


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc)))
def test_an_index_time_is_read_back_as_strptime_reads_it(moment: datetime) -> None:
    text = iso(moment)
    read = from_iso(text)
    assert read == moment == datetime.strptime(text, ISO).replace(tzinfo=timezone.utc)
    assert read.tzinfo is timezone.utc


@pytest.mark.parametrize("text", ["2026-01-01T01:00:04Z", "2026-01-01 01:00:04.191325Z", "2026-01-01T01:00:04.191325",
                                  "2026-01-01T01:00:04.191325+00:00", "2026-13-01T01:00:04.191325Z",
                                  "2026-01-01T01:00:04.191325Zx", "\u0662026-01-01T01:00:04.191325Z", ""])
def test_an_index_time_in_another_form_is_read_or_refused_as_strptime_does(text: str) -> None:
    try:
        expected: Any = datetime.strptime(text, ISO).replace(tzinfo=timezone.utc)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            from_iso(text)
    else:
        assert from_iso(text) == expected


def test_the_events_columns_are_the_tables_but_its_id() -> None:
    assert set(EVENT_COLUMNS) == {c.name for c in events_table.columns} - {"id"}


@given(st.lists(events(), max_size=6))
def test_event_values_are_the_event_rows_as_tuples(lines: list[dict[str, Any]]) -> None:
    rows = event_rows_of(lines)
    for row in rows:  # the rebuild indexes a log's lines under its own folder's ids
        row["show_id"], row["episode_id"] = "s", "e"
        row["data"] = orjson.dumps(row["data"]).decode()
    before = orjson.dumps(lines)
    assert event_values(lines, "s", "e") == [tuple(row[c] for c in EVENT_COLUMNS) for row in rows]
    assert orjson.dumps(lines) == before  # the lines themselves are left as they were (doc, patch, key order)


def test_event_values_refuse_a_time_that_is_not_one_as_event_rows_do() -> None:
    line = {"version": 1, "at": "yesterday", "kind": "create", "show_id": "s", "episode_id": "e"}
    with pytest.raises(ValueError):
        event_rows_of([line])
    with pytest.raises(ValueError):
        event_values([line], "s", "e")
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert event_values([{**line, "at": moment}], "s", "e")[0][3] == "2026-01-01T00:00:00.000000Z"


def _typed_by_loops(event: Any) -> bool:
    """The type check as it was written before (loops over the field names)."""
    if not isinstance(event, dict) or type(event.get("version")) is not int:
        return False
    for key in _EVENT_TEXT:
        if type(event.get(key)) is not str:
            return False
    for key in _EVENT_OPTIONAL_TEXT:
        value = event.get(key)
        if value is not None and type(value) is not str:
            return False
    cost = event.get("cost")
    return not (cost is not None and type(cost) is not int and type(cost) is not float)


FIELDS = ("version", "at", "kind", "show_id", "episode_id", "from_stage", "to_stage", "message", "sha256",
          "stage", "cost", "other")


INT64_SCALARS = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats() | st.text(max_size=8)


@given(st.dictionaries(st.sampled_from(FIELDS), INT64_SCALARS | st.lists(st.integers(0, 9), max_size=2),
                       max_size=3), st.sets(st.sampled_from(FIELDS[:5]), max_size=1), st.booleans())
def test_an_event_lines_type_check_is_the_plain_loops(changed: dict[str, Any], dropped: set[str],
                                                      strict: bool) -> None:
    event: dict[str, Any] = {"version": 1, "at": "2026-01-01T00:00:00Z", "kind": "create", "show_id": "s",
                             "episode_id": "e", "to_stage": "x", "cost": 0.5}
    event.update(changed)  # a valid line with a field or two of any JSON type, or one required field gone
    for key in dropped:
        event.pop(key, None)
    line = orjson.dumps(event)
    parsed = _parse_event_line(line, strict)
    expected = _typed_by_loops(orjson.loads(line))
    assert (parsed is not None) == expected


def test_an_event_line_of_another_json_type_is_refused() -> None:
    for line in (b"[1]", b"3", b'"x"', b"null"):
        assert _parse_event_line(line) is None and _parse_event_line(line, strict=False) is None


def test_read_events_is_read_lines_without_the_bytes(tmp_path: Any) -> None:
    log = tmp_path / "events.jsonl"
    lines = [orjson.dumps({"version": v, "at": "2026-01-01T00:00:00Z", "kind": "k", "show_id": "s",
                           "episode_id": "e"}) + b"\n" for v in (1, 2, 3)]
    log.write_bytes(b"".join(lines) + b'{"torn')
    assert [e for e, _ in read_lines(str(log), 2)] == read_events(str(log), 2)
    assert [raw for _, raw in read_lines(str(log), 3)] == lines
    log.write_bytes(lines[0] + b"garbage\n" + lines[1])
    with pytest.raises(Exception, match=":2: unreadable event line"):
        read_events(str(log), 2)
    log.write_bytes(lines[1] + lines[0])
    with pytest.raises(Exception, match="version 1 comes after version 2"):
        read_events(str(log), 3)


@given(st.binary(max_size=60) | st.text(alphabet="0123456789 .e-x", max_size=60).map(str.encode))
def test_the_long_number_test_is_the_regex(raw: bytes) -> None:
    assert has_long_number(raw) == (_LONG_NUMBER.search(raw) is not None)


def test_the_long_number_test_finds_nineteen_digits_anywhere() -> None:
    assert has_long_number(b'{"n": 9223372036854775808}')
    assert has_long_number(b"1234567890123456789")
    assert not has_long_number(b'{"n": 922337203685477580, "m": 1.5}')


JSONISH = st.recursive(JSON_SCALARS | st.just("\ud800") | st.just(float("nan")),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           st.text(max_size=3) | st.just("\udcff"), inner, max_size=3), max_leaves=12)


@given(JSONISH)
def test_the_metadata_check_takes_and_refuses_what_the_value_by_value_check_does(value: Any) -> None:
    def outcome(check: Any) -> str | None:
        try:
            check(value, "metadata", 0)
        except ValueError as exc:
            return str(exc)
        return None

    assert outcome(_plain_json) == outcome(_plain_checked)
    if _plain_ok(value, 0):
        assert outcome(_plain_checked) is None


def test_the_metadata_check_refuses_nesting_past_the_limit() -> None:
    deep: Any = 1
    for _ in range(MAX_METADATA_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than"):
        _plain_json(deep, "metadata")
    assert _plain_json(deep[0], "metadata") is deep[0]


class Sneaky(str):
    pass


def test_a_remembered_id_is_still_checked_by_exact_type() -> None:
    assert check_id("discovered") == "discovered" and "discovered" in VALID_IDS
    assert check_id("discovered") == "discovered"
    for bad in ("aux", "com1.txt", "../x", "a\n", "", "x" * 129):
        with pytest.raises(InvalidIdError):
            check_id(bad)
        assert bad not in VALID_IDS
    with pytest.raises(InvalidIdError):
        check_id(Sneaky("discovered"))  # type: ignore[arg-type]
    with pytest.raises(InvalidIdError):
        check_id(b"discovered")


def test_the_remembered_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import statekit.ids as ids

    monkeypatch.setattr(ids, "VALID_IDS_MAX", 4)
    VALID_IDS.clear()
    for i in range(10):
        check_id(f"id{i}")
        assert len(VALID_IDS) <= 4
    assert "id9" in VALID_IDS


def test_a_file_with_a_bad_id_is_reported_though_the_id_was_valid_elsewhere(tmp_path: Any) -> None:
    store = Store.init(tmp_path / "s")
    store.create("show", "ep1")
    path = tmp_path / "s/shows/show/episodes/ep1/episode.yaml"
    path.write_text(path.read_text().replace("stage: discovered", "stage: Discovered"))
    report = store.rebuild_index()
    assert [p.field for p in report.problems] == ["stage"]
    assert re.search(r"episode\.yaml:\d+:", report.problems[0].message)


SCALARS = ["", "~", "null", "Null", "yes", "No", "on", "true", "y", "1", "-1", "+12", "0x1F", "0o17", "0b101", "017",
           "1_000", "1:30", "1.5", "-.5e+3", ".inf", "-.Inf", ".nan", "1e5", "<<", "=", "2026-01-01",
           "2026-01-01T00:00:00Z", "plain text", "t", "o"]


@given(st.sampled_from(SCALARS) | st.text(alphabet="-+0123456789._:eExXbBoO~<=yYnNtTfFaAlLuU \t", max_size=10)
       | st.text(max_size=6), st.tuples(st.booleans(), st.booleans()))
def test_the_yaml_loaders_scalar_resolution_is_pyyamls(value: str, implicit: tuple[bool, bool]) -> None:
    import yaml
    from yaml.resolver import BaseResolver

    from statekit.codecs import _Loader

    loader = _Loader("")
    # libyaml passes (False, False) only for an empty node tagged "!" alone, where PyYAML's own
    # parser passes (True, False): the resolution PyYAML's loader gives that node (test_codecs)
    bare = not value and implicit == (False, False)
    try:
        for kind in (yaml.ScalarNode, yaml.SequenceNode, yaml.MappingNode):
            plain = BaseResolver.resolve(loader, kind, value, (True, False) if bare and kind is yaml.ScalarNode
                                         else implicit)
            assert loader.resolve(kind, value, implicit) == plain
    finally:
        loader.dispose()


def test_the_index_keeps_event_lines_without_the_ledgers_doc_and_patch(tmp_path: Path) -> None:
    """events.data is the line without ``doc``/``patch`` (the data lives in events.jsonl), written
    alike by a commit and by a rebuild; an index whose rows an older revision derived is rebuilt."""
    import sqlite3

    from statekit.index.tables import ROWS_REVISION

    store = Store.init(tmp_path / "s")
    store.create("sh", "e1", title="x")
    store.advance("sh", "e1", "downloading", cost=0.5)
    log = (tmp_path / "s/shows/sh/episodes/e1/events.jsonl").read_bytes().splitlines()
    assert "doc" in orjson.loads(log[0]) and "patch" in orjson.loads(log[1])
    db = tmp_path / "s/.statekit/index.db"

    def stored() -> list[dict]:
        with sqlite3.connect(db) as conn:
            return [orjson.loads(d) for (d,) in conn.execute("SELECT data FROM events ORDER BY version")]

    def lean_lines() -> list[dict]:
        return [{k: v for k, v in orjson.loads(line).items() if k not in ("doc", "patch")} for line in log]

    assert stored() == lean_lines()  # written by the commits
    store.rebuild_index()
    assert stored() == lean_lines()  # and by a rebuild
    store.close()
    with sqlite3.connect(db) as conn:  # rows as an older statekit derived them: the whole line
        conn.execute("UPDATE events SET data = ? WHERE version = 1", (log[0].decode(),))
        conn.execute("UPDATE index_meta SET value = '0009' WHERE key = 'rows_revision'")
    reopened = Store.open(tmp_path / "s")
    reopened.counts()
    assert stored() == lean_lines()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM index_meta WHERE key = 'rows_revision'").fetchone()[0] == ROWS_REVISION
    reopened.close()
