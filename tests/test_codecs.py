"""Reading is safe and strict; writing keeps what a person put in a file."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekit.codecs import JSON_CODEC, MAX_DEPTH, YAML_CODEC, Parsed, line_of, same
from statekit.errors import CorruptFileError
from statekit.models import Episode

# --- reading refuses what is not plain data ---------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: !!python/object:os.system {}\n", "python/object"),
        ("a: !!python/object/apply:os.system ['echo hi']\n", "python/object"),
        ("a: !custom 3\n", "!custom"),
        ("a: !!binary aGVsbG8=\n", "binary"),
        ("a: !!set {x, y}\n", "set"),
        ("a: &x [1]\nb: *x\n", "aliases"),
        ("base: &b {x: 1}\nc:\n  <<: *b\n", "aliases"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("a: .nan\n", "NaN"),
        ("a: -.inf\n", "infinity"),
        ("1: x\n", "keys must be text"),
        ("a: [1, 2\n", "invalid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("", "empty"),
        ("a: 1\n---\nb: 2\n", "ep.yaml:2: invalid YAML"),
        ("a: \x01\n", "invalid YAML"),
    ],
)
def test_yaml_loader_refuses_with_a_clear_message(text: str, needle: str) -> None:
    with pytest.raises(CorruptFileError) as info:
        YAML_CODEC.load(text.encode(), "ep.yaml")
    assert needle in str(info.value)
    assert str(info.value).startswith("ep.yaml")


def test_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 12)]
    with pytest.raises(CorruptFileError, match="aliases"):
        YAML_CODEC.load("\n".join(lines).encode(), "bomb.yaml")


def deep_files(levels: int) -> list[tuple[str, str, int]]:
    """(file name, text nested ``levels`` deep, line of the level past MAX_DEPTH) in each style."""
    inner = levels - 1  # the top mapping is the first level
    files = [
        ("flow.yaml", "a: " + "[" * inner + "]" * inner + "\n", 1),
        ("dashes.yaml", "a:\n" + "- " * inner + "x\n", 2),
        ("one-line.json", '{"a": ' + "[" * inner + "]" * inner + "}", 1),
        ("pretty.json", '{"a":\n' + "[\n" * inner + "]\n" * inner + "}", MAX_DEPTH + 1),
    ]
    if levels <= 1000:  # one line per level, indented one space further each time
        text = "".join(" " * i + f"k{i}:\n" for i in range(levels)) + " " * levels + "x\n"
        files.append(("indented.yaml", text, MAX_DEPTH + 1))
    return files


# 999 and 1,000 sit on either side of libyaml 0.2.6's own limit, which refuses
# with its own words; older builds' C composer could crash on 100,000 levels
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 999, 1000, 100_000])
def test_deep_nesting_is_refused_with_statekits_own_message(levels: int) -> None:
    for name, text, line in deep_files(levels):
        codec = YAML_CODEC if name.endswith(".yaml") else JSON_CODEC
        with pytest.raises(CorruptFileError) as info:
            codec.load(text.encode(), name)
        assert info.value.message == f"{name}:{line}: nested more than {MAX_DEPTH} levels deep"
        assert (info.value.path, info.value.line) == (name, line)


def test_nesting_up_to_the_limit_is_read_the_same_in_both_formats() -> None:
    for name, text, _ in deep_files(MAX_DEPTH):
        codec = YAML_CODEC if name.endswith(".yaml") else JSON_CODEC
        value = codec.load(text.encode(), name)
        for _ in range(MAX_DEPTH - 1):
            (value,) = value.values() if isinstance(value, dict) else value
        assert value in ([], ["x"], {f"k{MAX_DEPTH - 1}": "x"}), name  # the innermost level


def test_brackets_in_json_text_are_not_nesting() -> None:
    text = "[{" * MAX_DEPTH + '\\"\\\\'
    assert JSON_CODEC.load(orjson.dumps({"a": text, "b": [text]}), "x.json") == {"a": text, "b": [text]}


def test_a_syntax_error_in_a_long_file_keeps_its_line() -> None:
    text = "".join(f"k{i}: [{i}]\n" for i in range(MAX_DEPTH)) + "bad: [1, 2\n"
    with pytest.raises(CorruptFileError) as info:
        YAML_CODEC.load(text.encode(), "long.yaml")
    assert str(info.value).startswith("long.yaml:") and "invalid YAML" in str(info.value)
    assert info.value.line is not None and info.value.line > MAX_DEPTH


def test_invalid_utf8_names_the_line() -> None:
    with pytest.raises(CorruptFileError, match=r"ep.yaml:2: not valid UTF-8"):
        YAML_CODEC.load(b"a: 1\nb: \xff\xfe\n", "ep.yaml")


@pytest.mark.parametrize("text", [
    b"x: !\n", b"x:\n- !\n- 2\n", b"x: ! 1\n", b"x: ! true\n", b"x: ! abc\n", b'x: ! ""\n', b"x: !!str\n",
    b"x: !!str 1\n", b"x: ''\n", b"x:\n", b"x: ~\n", b"x: !!null\n", b"x:\n- !\n- ! x\n",
])
def test_tagged_and_empty_scalars_read_as_pythons_yaml_and_ruamel_read_them(text: bytes) -> None:
    """libyaml makes an empty node tagged ``!`` alone the text ""; PyYAML's own parser and
    ruamel.yaml (the round trip that rewrites the file) read null: statekit reads what they do."""
    import io

    import yaml
    from ruamel.yaml import YAML

    plain = yaml.load(text, Loader=yaml.SafeLoader)  # PyYAML's parser in Python, not libyaml's
    rewritten = YAML(typ="safe", pure=True).load(io.BytesIO(text))
    assert YAML_CODEC.load(text, "x.yaml") == plain == rewritten


def test_timestamps_and_dates_stay_text() -> None:
    data = YAML_CODEC.load(b"d: 2004-04-14\nt: 2026-01-01T10:00:00Z\n", "x.yaml")
    assert data == {"d": "2004-04-14", "t": "2026-01-01T10:00:00Z"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": NaN}', "NaN is not allowed"),
        (b'{"a": Infinity}', "Infinity is not allowed"),
        (b'{"a": 1', "invalid JSON"),
        (b"[1]", "expected an object"),
        (b"", "invalid JSON"),
    ],
)
def test_json_loader_refuses_with_a_clear_message(text: bytes, needle: str) -> None:
    with pytest.raises(CorruptFileError) as info:
        JSON_CODEC.load(text, "ep.json")
    assert needle in str(info.value)


# --- round trips -------------------------------------------------------------------

TRICKY = ["no", "yes", "on", "off", "~", "null", "true", "1e3", "0x1f", "0o17", "1_000", "2004-04-14",
          "12:30", "#hash", "a: b", "- x", "'q'", '"dq"', "", " lead", "trail ", "multi\nline\n", "tab\there",
          "ü ünïcode ✓", "%percent", "@at", "`tick", "*star", "&amp", "!bang", "|pipe", ">gt", "[x]", "{y}"]

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(TRICKY), st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(TRICKY) | st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
stage_id = st.sampled_from(["discovered", "downloading", "failed", "converted"])
cost = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
moment = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.just(timezone.utc))


@st.composite
def episodes(draw: st.DrawFn) -> Episode:
    costs = draw(st.dictionaries(stage_id, cost, max_size=3))
    return Episode.model_validate({
        "show_id": "show", "episode_id": "ep1", "title": draw(st.sampled_from(TRICKY) | st.text(max_size=40)),
        "stage": draw(stage_id), "version": draw(st.integers(0, 10**6)), "created_at": draw(moment),
        "updated_at": draw(moment), "stage_entered_at": draw(moment),
        "message": draw(st.none() | st.sampled_from(TRICKY) | st.text(max_size=40)),
        "costs": costs, "attempts": draw(st.dictionaries(stage_id, st.integers(0, 99), max_size=3)),
        "metadata": draw(st.dictionaries(st.text(max_size=10) | st.sampled_from(TRICKY), json_value, max_size=5)),
        "files": draw(st.dictionaries(st.sampled_from(["audio", "video", "no"]), st.sampled_from(TRICKY))),
        "error_history": [{"at": draw(moment), "stage": "downloading", "kind": "transient",
                           "message": draw(st.sampled_from(TRICKY)), "traceback": "Traceback:\n  line 1\n"}],
    })


@pytest.mark.parametrize("codec", [YAML_CODEC, JSON_CODEC], ids=["yaml", "json"])
@given(episode=episodes())
def test_model_file_model_round_trip(codec: object, episode: Episode) -> None:
    data = episode.model_dump(mode="json")
    written = codec.dump(data)  # type: ignore[attr-defined]
    reread = codec.load(written.raw, "x")  # type: ignore[attr-defined]
    assert same(reread, data)
    assert Episode.model_validate(reread) == episode


CHANGES = [
    lambda d: {"stage": "converted", "costs": {**d["costs"], "converted": 0.5}},  # advance
    lambda d: {"title": "yes", "metadata": {**d["metadata"], "new key": [1, "no", {"x": None}]}},  # update
    lambda d: {"message": "multi\nline\n"},
    lambda d: {"error_history": d["error_history"] + [{"at": "2026-01-01T00:00:00Z", "stage": "x", "kind": "k",
                                                       "message": "m", "traceback": "Traceback:\n  x\n"}]},
    lambda d: {"attempts": {**d["attempts"], "converted": 1}, "files": {}, "approvals": {}},
    lambda d: {"checkpoints": {"outline": {"sha256": "0" * 64, "size": 3, "at": "2026-01-01T00:00:00Z"}}},
]


@given(episode=episodes(), where=st.lists(st.integers(0, 80), min_size=1, max_size=4),
       change=st.integers(0, len(CHANGES) - 1))
def test_a_commented_file_keeps_its_comments_and_reads_back_exactly(episode: Episode, where: list[int],
                                                                    change: int) -> None:
    # A person's comments, between lines and after values; statekit then changes
    # the data as its writes do. The comments stay and the data reads back exactly.
    data = episode.model_dump(mode="json")
    lines = YAML_CODEC.dump(data).raw.decode().splitlines(keepends=True)
    for w in where:
        i = w % len(lines)
        if lines[i][:1].isalpha() and not lines[i].rstrip().endswith("|"):
            lines[i] = lines[i].rstrip("\n") + "  # note after a value\n"
        elif lines[i][:1].isalpha():
            lines.insert(i, "# note on its own line\n")
    raw = ("# a note a person wrote\n" + "".join(lines)).encode()
    previous = YAML_CODEC.parse(raw, "x")
    assert same(previous.data, data)
    changed = {**data, "version": data["version"] + 1, **CHANGES[change](data)}
    written = YAML_CODEC.dump(changed, previous)
    assert written.raw.startswith(b"# a note a person wrote\n")
    assert written.raw.count(b"# note") == raw.count(b"# note")
    assert same(YAML_CODEC.load(written.raw, "x"), changed)


def test_typical_writes_edit_the_text_in_place() -> None:
    from statekit.codecs import _dump_patched

    raw = (b"# reviewed by ana\nschema_version: 1\ntitle: Old  # final title\nstage: downloading\nversion: 2\n"
           b"costs: {}\nattempts:\n  downloading: 1\napprovals: {}\ncheckpoints: {}\nerror_history: []\n")
    previous = YAML_CODEC.parse(raw, "x")
    for change in CHANGES[:1] + CHANGES[3:]:
        data = {**previous.data, "version": 3, **change(previous.data)}
        patched = _dump_patched(data, previous)
        assert patched is not None, change
        assert patched.raw.startswith(b"# reviewed by ana\n") and b"title: Old  # final title\n" in patched.raw
        assert same(patched.data, data)


def test_comments_and_key_order_survive_an_edit() -> None:
    raw = (b"# top note\nversion: 3\ntitle: Old  # keep me\n"
           b"stage: downloading\ncosts:\n  downloading: 0.5  # paid\n")
    previous = Parsed(raw, YAML_CODEC.load(raw, "x"))
    new = {"stage": "downloaded", "title": "Old", "version": 4,
           "costs": {"downloading": 0.5, "converting": 0.25}}
    text = YAML_CODEC.dump(new, previous).raw.decode()
    assert text.startswith("# top note\nversion: 4\ntitle: Old  # keep me\nstage: downloaded\n")
    assert "downloading: 0.5  # paid\n  converting: 0.25\n" in text


def test_key_order_survives_without_comments() -> None:
    raw = b"stage: a\nversion: 1\ntitle: t\nnested:\n  z: 1\n  a: 2\n"
    previous = Parsed(raw, YAML_CODEC.load(raw, "x"))
    new = {"title": "t2", "version": 2, "stage": "b", "nested": {"a": 2, "z": 1}, "extra": 1}
    text = YAML_CODEC.dump(new, previous).raw.decode()
    assert text == "stage: b\nversion: 2\ntitle: t2\nnested:\n  z: 1\n  a: 2\nextra: 1\n"
    json_prev = Parsed(b"", {"stage": "a", "version": 1, "title": "t"})
    assert list(JSON_CODEC.load(JSON_CODEC.dump(new, json_prev).raw, "x")) == [
        "stage", "version", "title", "nested", "extra"]


def test_multiline_text_is_written_as_a_block() -> None:
    text = YAML_CODEC.dump({"traceback": "Traceback:\n  File x\nValueError\n"}).raw.decode()
    assert text.startswith("traceback: |")


def test_line_of_finds_nested_fields() -> None:
    raw = b"a: 1\nb:\n  c: 2\n  d:\n  - x\n  - y\n"
    assert line_of(raw, ("a",)) == 1
    assert line_of(raw, ("b", "c")) == 3
    assert line_of(raw, ("b", "d", 1)) == 6
    assert line_of(b'{\n  "a": 1,\n  "b": {"c": 2}\n}\n', ("b", "c")) == 3


# --- the JSON codec's fast reading (orjson) gives exactly the strict reading ----------------

_keys = st.sampled_from(["a", "b", "a:b", "k\\u003a", 'q"', "\u00e9"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 65), max_value=1 << 65),
                     st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["x", "1:2", "\\u003a", "é"]))


def _text(value: object) -> str:
    """JSON text for ``value``, where a list of pairs is an object that may repeat a key."""
    if isinstance(value, tuple):
        return "{" + ", ".join(f'"{k.replace(chr(34), chr(92) + chr(34))}" : {_text(v)}' for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value + '"'
    return orjson.dumps(value).decode() if not isinstance(value, int) or isinstance(value, bool) else str(value)


_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(st.tuples(_keys, inner), max_size=4).map(tuple)), max_leaves=12)


def _strict(raw: bytes) -> object:
    import json

    from statekit.codecs import int64, no_duplicates

    try:
        return json.loads(raw.decode(), object_pairs_hook=no_duplicates, parse_int=int64)
    except ValueError:
        return "refused"


@given(st.lists(st.tuples(_keys, _values), max_size=5).map(tuple))
def test_json_fast_reading_equals_the_strict_one(pairs: tuple) -> None:
    raw = _text(pairs).encode()
    try:
        got: object = JSON_CODEC.load(raw, "e.json")
    except CorruptFileError:
        got = "refused"
    assert got == _strict(raw) or (got != got and repr(got) == repr(_strict(raw)))


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, True, False, 1 << 70,
                                                          float("inf"), float("-inf"), float("nan")]),
              st.integers(), st.floats(allow_nan=False), st.text(max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abc"), inner, max_size=3)),
    max_leaves=10)


@given(_json_values, _json_values)
def test_same_by_canonical_text_agrees_with_the_walk(a: object, b: object) -> None:
    from statekit.codecs import _same, same  # noqa: PLC2701

    assert same(a, b) == _same(a, b)
    assert same(a, a) and same(b, b)  # an object is its own equal, as in Python's containers
    assert same(float("inf"), None) is False
    assert same([float("nan")], [float("nan")]) is False  # two NaNs are not equal


def test_json_lines_skip_a_torn_or_foreign_line() -> None:
    from statekit.codecs import json_lines

    raw = b'{"a": 1}\n{"b": 2\n[1, 2]\n\n{"c": 3}\n'  # a torn append, a line that is not an object
    assert json_lines(raw) == [{"a": 1}, {"c": 3}]
    assert json_lines(None) == [] and json_lines(b"") == []


@pytest.mark.parametrize("header", ["|", "|-", "|2+", ">", ">-"])
@pytest.mark.parametrize("change", [0, 1, 2])
def test_a_comment_after_a_block_scalar_s_header_stays_when_the_value_is_rewritten(header: str, change: int) -> None:
    # A person's comment on the header line of a block scalar (``title: |2+  # note``) is a
    # comment like any other: a write that replaces the value keeps it on the key's line.
    raw = (f"schema_version: 1\ntitle: {header}  # note on the title\n  two\n  lines\nstage: downloading\n"
           "version: 2\nmessage: null\ncosts: {}\nmetadata: {}\n").encode()
    previous = YAML_CODEC.parse(raw, "x")
    changed = {**previous.data, "version": 3, **[{"title": "one line"}, {"title": "new\ntext\n"},
                                                 {"title": "x", "message": "multi\nline\n"}][change]}
    written = YAML_CODEC.dump(changed, previous)
    assert written.raw.count(b"# note on the title") == 1
    assert same(YAML_CODEC.load(written.raw, "x"), changed)
