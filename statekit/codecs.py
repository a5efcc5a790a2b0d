"""Codecs: bytes <-> plain data for YAML and JSON files. No I/O.

Reading always goes through one safe parser (PyYAML's C loader where
available) that builds only plain JSON-like data: no custom tags, no aliases,
no duplicate keys, no NaN/Infinity, text keys only. Timestamps stay strings;
the models parse them.

Writing keeps what a person put in a file. YAML that carries comments is
written through ruamel.yaml's round trip (comments, key order and quoting
survive); YAML without comments, and JSON, keep their key order and take a
fast emitter. Every round-trip write is re-read with the reading parser and
must equal the data meant, so a YAML 1.1/1.2 difference can never change a
value silently.
"""

from __future__ import annotations

import io
import json
import logging
import re
import textwrap
import threading
from collections.abc import Iterator
from typing import Any, NoReturn, Protocol

import orjson
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarfloat import ScalarFloat
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString, SingleQuotedScalarString

from .blockyaml import block_dump
from .errors import CorruptFileError

log = logging.getLogger("statekit")

try:  # the C extension is in PyYAML's wheels; the pure loader is the same grammar
    from yaml import CSafeDumper as _BaseDumper
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as _BaseDumper  # type: ignore[assignment]
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

MAX_DEPTH = 100
"""Deepest nesting accepted in a file, YAML or JSON: statekit's own limit,
checked before the recursive composers run (PyYAML's C composer could crash
the process on ~100,000 levels; libyaml 0.2.6 stops at 1,000 with its own words)."""

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_STR = "tag:yaml.org,2002:str"


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """PyYAML's C parser and composer; ``_build`` turns its nodes into data."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """PyYAML's, no list per scalar (``_RESOLVERS``); quoted is text; empty tagged ``!`` is null (as ruamel)."""
        if kind is not _ScalarKind or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        if implicit[0] or not (implicit[1] or value):  # (False, False) and "": libyaml's empty node tagged "!"
            for tag, regexp in _RESOLVERS.get(value[:1], _WILDCARD):
                if regexp.match(value):
                    return tag
        return self.DEFAULT_SCALAR_TAG


# Timestamps stay text: the models parse them, and dates in metadata keep exactly what the person wrote.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ScalarKind = yaml.ScalarNode
_WILDCARD = tuple(_Loader.yaml_implicit_resolvers.get(None, []))  # by first character ('' too), wildcards last:
_RESOLVERS = {c: tuple(r) + _WILDCARD for c, r in _Loader.yaml_implicit_resolvers.items() if c is not None}

_STR_TAG, _INT_TAG, _FLOAT_TAG, _BOOL_TAG, _NULL_TAG, _SEQ_TAG, _MAP_TAG, _MERGE_TAG = (
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
)
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)").fullmatch
_PLAIN_FLOAT = re.compile(r"[-+]?[0-9]*\.[0-9]+(?:[eE][-+][0-9]+)?").fullmatch
_NUMBERS = yaml.constructor.SafeConstructor()  # PyYAML's own reading of the rarer number forms
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
"""The integers a file may hold: what the index (SQLite, orjson) can store."""
_ALIASES = "anchors and aliases (&name, *name, <<) are not allowed in statekit files"
_Scalar, _Sequence, _Mapping = yaml.ScalarNode, yaml.SequenceNode, yaml.MappingNode


def _refuse(node: yaml.Node, message: str) -> NoReturn:
    raise yaml.constructor.ConstructorError(None, None, message, node.start_mark)


def _build(node: yaml.Node, seen: set[int] | None) -> Any:
    """Plain data from a composed YAML node: text, numbers, booleans, null,
    lists and mappings with text keys. Anything else is refused with its
    position: other tags (``!!python/object``), aliases, merge keys,
    duplicate keys, NaN and infinity. (PyYAML's generic constructor does the
    same job several times slower.) ``seen``: None when the text has no
    ``*``, so it cannot hold an alias."""
    if seen is not None:
        if id(node) in seen:  # an alias is the same node met twice
            _refuse(node, _ALIASES)
        seen.add(id(node))
    tag = node.tag
    if tag == _STR_TAG and node.__class__ is _Scalar:
        return node.value
    if tag == _MAP_TAG and node.__class__ is _Mapping:
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _STR_TAG and key_node.__class__ is _Scalar:
                key = key_node.value
            else:
                if key_node.tag == _MERGE_TAG:
                    _refuse(key_node, _ALIASES)
                key = _build(key_node, seen)
                if not isinstance(key, str):
                    _refuse(key_node, f"mapping keys must be text, found {key!r} (quote it)")
            if key in mapping:
                _refuse(key_node, f"duplicate key {key!r}")
            mapping[key] = _build(value_node, seen)
        return mapping
    if tag == _SEQ_TAG and node.__class__ is _Sequence:
        return [_build(item, seen) for item in node.value]
    if node.__class__ is _Scalar:
        value = node.value
        try:
            if tag == _INT_TAG:
                number = int(value) if _PLAIN_INT(value) else _NUMBERS.construct_yaml_int(node)
                if not INT64_MIN <= number <= INT64_MAX:
                    _refuse(node, f"{value[:40]!r}: integers must fit in 64 bits")
                return number
            if tag == _FLOAT_TAG:
                number = float(value) if _PLAIN_FLOAT(value) else _NUMBERS.construct_yaml_float(node)
                if number != number or number in (float("inf"), float("-inf")):
                    _refuse(node, f"{value!r}: NaN and infinity are not allowed")
                return number
            if tag == _BOOL_TAG:
                return _NUMBERS.bool_values[value.lower()]
        except (ValueError, KeyError):
            _refuse(node, f"{value!r} is not a valid {tag.rsplit(':', 1)[-1]}")
        if tag == _NULL_TAG:
            return None
    _refuse(node, f"the tag {tag!r} is not allowed (plain text, numbers, lists and mappings only)")


class _Dumper(_BaseDumper):  # type: ignore[misc,valid-type]
    def ignore_aliases(self, data: Any) -> bool:  # never write anchors: we refuse to read them
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # tracebacks and long notes stay readable
    return dumper.represent_scalar(_STR, value, style=style)


_Dumper.add_representer(str, _represent_str)

_RESOLVER = yaml.resolver.Resolver()


def _ambiguous(text: str) -> bool:
    """True if ``text`` written plain would read back as something other than text."""
    return _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) != _STR


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CorruptFileError(
            f"{path}:{line}: not valid UTF-8 (byte {exc.start})", path=path, line=line
        ) from None


def _depth_bound(text: str) -> int:
    # Every collection starts with one of these (a block mapping starts on
    # its own line), so their count bounds the nesting depth cheaply.
    return sum(text.count(c) for c in "[{-?\n") + 1


def _too_deep(path: str, line: int) -> CorruptFileError:
    return CorruptFileError(f"{path}:{line}: nested more than {MAX_DEPTH} levels deep", path=path, line=line)


def _check_events_depth(events: Iterator[yaml.Event], path: str) -> None:
    depth = 0
    for event in events:
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(path, event.start_mark.line + 1)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_depth(text: str, path: str) -> None:
    if _depth_bound(text) <= MAX_DEPTH:
        return
    try:
        _check_events_depth(yaml.parse(text, Loader=_BaseLoader), path)
    except yaml.YAMLError:
        # libyaml 0.2.6 refuses 1,000 levels while it scans ahead, before the
        # first event: PyYAML's pure parser (a loop, no limit) finds the depth
        try:
            _check_events_depth(yaml.parse(text, Loader=yaml.SafeLoader), path)
        except yaml.YAMLError:
            return  # a syntax error: the loader reports it with its position


def _nested_too_deep(data: Any) -> bool:
    """True if ``data`` nests more than MAX_DEPTH levels (level by level: no recursion)."""
    level, depth = [data] if isinstance(data, (dict, list)) else [], 1
    while level:
        if depth > MAX_DEPTH:
            return True
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, (dict, list))]
        depth += 1
    return False


_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
"""Strings (skipped whole, brackets and all) and brackets, in valid JSON."""
_JSON_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_too_deep(text: str, path: str) -> CorruptFileError:
    """The error for JSON text nested too deeply, naming the line where it goes past MAX_DEPTH."""
    depth = 0
    for match in _JSON_NESTING.finditer(text):
        depth += _JSON_STEP.get(match.group(), 0)
        if depth > MAX_DEPTH:
            return _too_deep(path, text.count("\n", 0, match.start()) + 1)
    return CorruptFileError(f"{path}: nested too deeply", path=path)  # the stack ran out first


_CANONICAL = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
              | orjson.OPT_PASSTHROUGH_DATACLASS)
"""orjson writing only plain JSON types (anything else raises), keys sorted: equal text, same data."""


def json_lines(raw: bytes | None) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (``errors.jsonl``, ``store-events.jsonl``), oldest
    first; a damaged line (a torn append, a hand edit) is skipped, not an error."""
    found = []
    for line in (raw or b"").splitlines():
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict):
            found.append(item)
    return found


def same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type all the way down (1, 1.0 and True differ;
    one object is its own equal, as in Python's containers).
    Plain JSON data is compared in C first (``verify`` compares every file
    with the index): equal values (1 == 1.0 == True) whose canonical texts
    are equal too (``1``, ``1.0``, ``true``; orjson writes infinity as
    ``null``, but infinity is not equal to None) are the same; otherwise, or
    when the texts differ (0.0 and -0.0 are the same number), value by value."""
    try:
        if a == b and orjson.dumps(a, option=_CANONICAL) == orjson.dumps(b, option=_CANONICAL):
            return True
    except TypeError:  # not plain JSON data (a subclass, a time, an integer beyond 64 bits)
        pass
    return _same(a, b)


def _same(a: Any, b: Any) -> bool:
    if a is b:  # as Python's containers judge it: an object is its own equal (NaN too)
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def ordered_like(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """``new`` with its mapping keys in ``old``'s order (new keys last), so a
    person's key order survives the next write."""
    out = new if list(new) == list(old) else {
        **{k: new[k] for k in old if k in new}, **{k: v for k, v in new.items() if k not in old}
    }
    for k, v in out.items():
        before = old.get(k)
        if type(v) is dict and type(before) is dict:
            w = ordered_like(v, before)
            if w is not v:
                out = dict(out) if out is new else out
                out[k] = w
    return out


def _compose(text: str, path: str) -> tuple[yaml.Node, dict[str, Any]]:
    """The node tree and plain data of a YAML text (one parse for both)."""
    _check_depth(text, path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = _build(node, set() if "*" in text else None) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        parts = [p for p in (exc.context, exc.problem) if p]
        problem = " ".join(", ".join(parts or ["invalid YAML"]).split())
        where = f"{path}:{line}" if line else path
        raise CorruptFileError(f"{where}: invalid YAML: {problem}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise CorruptFileError(f"{path}: invalid YAML: {' '.join(str(exc).split())}", path=path) from None
    except RecursionError:
        raise CorruptFileError(f"{path}: nested too deeply", path=path) from None
    finally:
        loader.dispose()
    if data is None:
        raise CorruptFileError(f"{path}: the file is empty", path=path)
    if not isinstance(data, dict):
        raise CorruptFileError(
            f"{path}: expected a mapping of fields at the top, found {type(data).__name__}", path=path, line=1
        )
    return node, data


class Parsed:
    """A file's bytes and what they parse to (cached by the store)."""

    __slots__ = ("raw", "data", "rt", "node", "model", "canonical", "log_size", "sha256", "log_hash", "dumped")

    def __init__(self, raw: bytes, data: dict[str, Any], rt: Any = None, canonical: bool = False,
                 node: Any = None) -> None:
        self.raw = raw
        self.data = data
        self.rt = rt  # ruamel round-trip document of ``raw``, loaded on first need
        self.node = node  # YAML node tree of ``raw`` (positions of every value), for commented files
        self.model: Any = None
        self.canonical = canonical  # keys in the models' own order: no reordering needed
        self.log_size: int | None = None  # events.jsonl size right after we committed these bytes
        self.sha256: str | None = None  # hash of ``raw``, once someone needed it
        self.log_hash: str | None = None  # hash of the event line that committed these bytes (the next one's prev)
        self.dumped: dict[str, Any] | None = None  # the model's JSON data, as the committing event's patch ends at


def _keep_order(data: dict[str, Any], previous: Parsed | None) -> dict[str, Any]:
    if previous is None or previous.canonical:
        return data
    return ordered_like(data, previous.data)


_SCALAR_TYPES = (str, int, float, bool, type(None))
_HUGE = 1 << 30
_BEFORE_COMMENT = re.compile(r"(?::\s*(?:[|>][-+0-9]*)?)?").fullmatch  # what a comment on a key's line may follow


def _emit_scalars(values: list[Any]) -> list[str] | None:
    """Each value as one line of YAML, as the fast emitter writes it (None if
    one needs more than a line, e.g. multi-line text)."""
    if not values:
        return []
    text = yaml.dump(values, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, width=_HUGE)
    lines = text.splitlines()
    if len(lines) != len(values) or not all(line.startswith("- ") for line in lines):
        return None
    return [line[2:] for line in lines]


def _emit_block(value: Any, indent: int) -> str:
    """``value`` (a one-key mapping, or a list of items) as block YAML lines
    indented to ``indent`` columns."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, width=_HUGE,
                     sort_keys=False)
    return textwrap.indent(text, " " * indent)


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _line_end(text: str, index: int) -> int:
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _content_end(text: str, node: yaml.Node) -> int:
    """Just past the last line holding ``node``'s content (and any comment on
    that line); not past comments on later lines, which describe what follows."""
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        return _line_start(text, node.end_mark.index) if node.end_mark.column else node.end_mark.index
    if isinstance(node, yaml.ScalarNode) or node.flow_style or not node.value:
        return _line_end(text, node.end_mark.index - 1 if node.end_mark.index else 0)
    last = node.value[-1][1] if isinstance(node, yaml.MappingNode) else node.value[-1]
    return _content_end(text, last)


class _Edits:
    """Text edits that turn a person's YAML into the new data, touching only
    the entries that changed (so comments elsewhere stay where they are)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.changes: list[tuple[int, int, int, str, Any]] = []  # start, end, order, kind, payload

    def _add(self, start: int, end: int, kind: str, payload: Any) -> None:
        self.changes.append((start, end, len(self.changes), kind, payload))

    def _own_line(self, key: yaml.Node) -> bool:
        start = key.start_mark.index
        return self.text[_line_start(self.text, start):start].strip() == ""

    def _replace_entry(self, key: yaml.Node, value_node: yaml.Node, name: str, value: Any) -> bool:
        """Rewrite one ``key: value`` entry as block YAML, keeping a comment on the key's line
        (after the colon, a one-line value, or a block scalar's header such as ``|2+``)."""
        if not self._own_line(key):
            return False
        start = _line_start(self.text, key.start_mark.index)
        end = _content_end(self.text, value_node)
        one_line = isinstance(value_node, yaml.ScalarNode) and value_node.style not in ("|", ">") or (
            not isinstance(value_node, yaml.ScalarNode) and value_node.flow_style)
        after = value_node.end_mark.index if one_line else key.end_mark.index
        rest = self.text[after:_line_end(self.text, after)]
        mark = rest.find("#")
        tail = "  " + rest[mark:].rstrip("\n") if mark >= 0 and _BEFORE_COMMENT(rest[:mark].strip()) else ""
        fragment = _emit_block({name: value}, key.start_mark.column)
        if tail:
            first, _, others = fragment.partition("\n")
            fragment = f"{first}{tail}\n{others}"
        self._add(start, end, "text", fragment)
        return True

    def mapping(self, node: yaml.Node, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Record the edits for one block mapping; False if it cannot be done
        by editing text (the caller then falls back to the round trip)."""
        if not isinstance(node, yaml.MappingNode) or node.flow_style or not node.value:
            return False
        entries = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        if entries.keys() != old.keys():
            return False
        for name in old:
            if name not in new:
                key, value_node = entries[name]
                if not self._own_line(key):
                    return False
                self._add(_line_start(self.text, key.start_mark.index), _content_end(self.text, value_node),
                          "text", "")
        added = {}
        for name, value in new.items():
            if name not in old:
                added[name] = value
                continue
            before = old[name]
            if same(before, value):
                continue
            key, child = entries[name]
            if (isinstance(child, yaml.ScalarNode) and child.style not in ("|", ">")
                    and isinstance(value, _SCALAR_TYPES) and not (isinstance(value, str) and "\n" in value)):
                self._add(child.start_mark.index, child.end_mark.index, "scalar", value)
            elif (isinstance(child, yaml.MappingNode) and not child.flow_style and isinstance(value, dict)
                  and isinstance(before, dict) and value and self.mapping(child, before, value)):
                pass
            elif (isinstance(child, yaml.SequenceNode) and not child.flow_style and isinstance(value, list)
                  and isinstance(before, list) and value and self.sequence(child, before, value)):
                pass
            elif not self._replace_entry(key, child, name, value):
                return False
        if added:
            at = _content_end(self.text, node)
            indent = node.value[0][0].start_mark.column
            for name, value in added.items():
                self._add(at, at, "text", _emit_block({name: value}, indent))
        return True

    def sequence(self, node: yaml.Node, old: list[Any], new: list[Any]) -> bool:
        """Keep the items both lists start with; rewrite the rest as block items."""
        keep = 0
        while keep < min(len(old), len(new)) and same(old[keep], new[keep]):
            keep += 1
        fresh = _emit_block(new[keep:], node.start_mark.column) if new[keep:] else ""
        if keep < len(old):
            first = node.value[keep]
            start = _line_start(self.text, first.start_mark.index)
            if self.text[start:first.start_mark.index].strip() != "-":
                return False
            self._add(start, _content_end(self.text, node.value[-1]), "text", fresh)
        else:
            at = _content_end(self.text, node)
            self._add(at, at, "text", fresh)
        return True

    def apply(self) -> str | None:
        scalars = [c for c in self.changes if c[3] == "scalar"]
        emitted = _emit_scalars([c[4] for c in scalars])
        if emitted is None:
            return None
        inline = dict(zip((c[2] for c in scalars), emitted))
        text = self.text
        if not text.endswith("\n"):
            text += "\n"
        for start, end, order, kind, payload in sorted(self.changes, key=lambda c: c[:3], reverse=True):
            text = text[:start] + (inline[order] if kind == "scalar" else payload) + text[end:]
        return text


def _dump_patched(data: dict[str, Any], previous: Parsed) -> Parsed | None:
    """Write ``data`` by editing the previous text in place: the fast way to
    keep a person's comments. None when that cannot be done (CRLF files,
    entries sharing a line with a sequence dash, ...) or does not read back
    as exactly ``data``."""
    text = previous.raw.decode("utf-8-sig")
    if "\r" in text:
        return None
    node = previous.node
    if node is None:
        node = _compose(text, "<previous>")[0]
    edits = _Edits(text)
    if not edits.mapping(node, previous.data, data):
        return None
    patched = edits.apply()
    if patched is None:
        return None
    try:
        new_node, reread = _compose(patched, "<patched>")
    except CorruptFileError:
        return None
    if not same(reread, data):  # the proof: the patched text reads back as exactly the new data
        return None
    return Parsed(patched.encode("utf-8"), reread, node=new_node)


class YamlCodec:
    name = "yaml"
    suffix = ".yaml"

    def __init__(self) -> None:
        self._local = threading.local()

    def load(self, raw: bytes, path: str) -> dict[str, Any]:
        return self.parse(raw, path).data

    def parse(self, raw: bytes, path: str) -> Parsed:
        """Parse ``raw``; a file with comments also keeps its node tree, which
        tells the next write where each value sits in the person's text."""
        text = _decode(raw, path)
        node, data = _compose(text, path)
        return Parsed(raw, data, node=node if "#" in text else None)

    def dump(self, data: dict[str, Any], previous: Parsed | None = None) -> Parsed:
        """``data`` as file content, keeping ``previous``'s comments and key order."""
        if previous is not None and b"#" in previous.raw:
            patched = _dump_patched(data, previous)
            if patched is not None:
                return patched
            out = self._dump_round_trip(data, previous)
            if out is not None:
                return Parsed(out[0], data, out[1])
        written = _keep_order(data, previous)
        return Parsed(self.dump_plain(written), written, canonical=written is data)

    @staticmethod
    def dump_plain(data: dict[str, Any], *, flow_leaves: bool = False) -> bytes:
        """Plain YAML in key order (block style by ``blockyaml`` when it can); ``flow_leaves``
        writes lists of plain values on one line (``[a, b]``), as in a hand-written config."""
        return (None if flow_leaves else block_dump(data, _Dumper)) or yaml.dump(  # type: ignore[no-any-return]
            data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096,
            default_flow_style=None if flow_leaves else False, encoding="utf-8",
        )

    def _round_trip(self) -> YAML:
        rt = getattr(self._local, "rt", None)
        if rt is None:  # one per thread: ruamel YAML objects are not thread-safe
            rt = YAML(typ="rt")
            rt.preserve_quotes = True
            rt.width = 4096
            rt.representer.ignore_aliases = lambda data: True
            rt.representer.add_representer(float, _represent_float)
            rt.representer.add_representer(ScalarFloat, _represent_kept_float)
            self._local.rt = rt
        return rt

    def _dump_round_trip(self, data: dict[str, Any], previous: Parsed) -> tuple[bytes, Any] | None:
        rt = self._round_trip()
        doc = previous.rt
        if doc is None:
            doc = rt.load(previous.raw.decode("utf-8-sig"))
        previous.rt = None  # the document is about to change: it no longer matches previous.raw
        if not isinstance(doc, CommentedMap):
            return None
        _merge(doc, previous.data, data)
        buf = io.StringIO()
        rt.dump(doc, buf)
        out = buf.getvalue().encode("utf-8")
        try:
            reread = self.load(out, "<round trip>")
        except CorruptFileError:
            reread = None
        if reread is None or not same(reread, data):
            log.warning("statekit: could not keep comments in a YAML file exactly; wrote it without them")
            return None
        return out, doc


# Characters that must be escaped in double quotes: controls, and the line
# breaks YAML 1.1 knows beyond \n (NEL, LS, PS), and the BOM.
_NEEDS_ESCAPE = re.compile("[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff\n\t]")
_BLOCK_UNSAFE = re.compile(r"[ \t]\n|\t|^\s")


def _to_round_trip(value: Any) -> Any:
    """Plain data -> ruamel nodes that read back as exactly the same data
    under the (YAML 1.1) reader: ambiguous text quoted, odd text escaped."""
    if isinstance(value, str):
        if _NEEDS_ESCAPE.search(value):
            return DoubleQuotedScalarString(value)
        if "\n" in value:
            return DoubleQuotedScalarString(value) if _BLOCK_UNSAFE.search(value) else LiteralScalarString(value)
        return SingleQuotedScalarString(value) if _ambiguous(value) else value
    if isinstance(value, dict):
        return CommentedMap((_to_round_trip(k), _to_round_trip(v)) for k, v in value.items())
    if isinstance(value, list):
        return CommentedSeq(_to_round_trip(v) for v in value)
    return value


def _merge(doc: CommentedMap, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Change ``doc`` (the round-trip view of ``old``) into ``new``, touching
    only what changed so comments on everything else stay where they were."""
    for key in [k for k in doc if k not in new]:
        del doc[key]
    for key, value in new.items():
        if key in doc and key in old:
            before = old[key]
            if same(before, value):
                continue
            node = doc[key]
            if isinstance(value, dict) and isinstance(before, dict) and isinstance(node, CommentedMap):
                _merge(node, before, value)
                continue
            if (
                isinstance(value, list) and isinstance(before, list) and isinstance(node, CommentedSeq)
                and len(value) > len(before) and same(value[: len(before)], before)
            ):
                node.extend(_to_round_trip(v) for v in value[len(before):])
                continue
        doc[key if key in doc else _to_round_trip(key)] = _to_round_trip(value)


def _float_text(value: float) -> str:
    # YAML 1.1 reads "1e+20" as text: write floats with a dot, as PyYAML does.
    text = repr(float(value)).lower()
    return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text


def _represent_float(representer: Any, value: float) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:float", _float_text(value))


def _represent_kept_float(representer: Any, value: ScalarFloat) -> Any:
    """A float a person wrote keeps its format, unless ruamel would render
    it wrongly (it puts some long mantissas one digit off)."""
    node = RoundTripRepresenter.represent_scalar_float(representer, value)
    try:
        exact = float(node.value.replace("_", "")) == float(value)
    except ValueError:
        exact = False
    return node if exact else _represent_float(representer, value)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite)")


def int64(text: str) -> int:
    """``parse_int`` for ``json.loads``: integers that fit in 64 bits, else ValueError."""
    number = int(text)
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(f"{text[:40]}: integers must fit in 64 bits")
    return number


_DIGITS_ONLY = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # translate: digits to 0, the rest to a space


def has_long_number(raw: bytes) -> bool:  # 19 digits in a row: an integer past 64 bits, which orjson reads?
    return b"0000000000000000000" in raw.translate(_DIGITS_ONLY)


def exact_json(raw: bytes) -> dict[str, Any] | None:
    """``raw`` read by orjson (a tenth of the standard library's time) when that reading is exactly the strict
    one, else None (the strict reader then decides, and words the error): an object, not nested past the limit, no
    integer beyond 64 bits (``has_long_number``: ``re``'s ``[0-9]{19}`` in C), and no duplicate key: orjson writes
    back what it read as ``raw`` (statekit's lines and files: no key dropped), or with as many colons (one per key
    outside strings; inside, as written, unless a ``\\u`` escape spelled one: the strict reader then)."""
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH or has_long_number(raw):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    as_file = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE if raw[-1:] == b"\n" else 0  # (``dump_plain``'s)
    again = orjson.dumps(data, option=as_file) if type(data) is dict else b""
    if again != raw and (not again or b"\\u" in raw or orjson.dumps(data).count(b":") != raw.count(b":")):
        return None
    return data


class JsonCodec:
    name = "json"
    suffix = ".json"

    def parse(self, raw: bytes, path: str) -> Parsed:
        return Parsed(raw, self.load(raw, path))

    def load(self, raw: bytes, path: str) -> dict[str, Any]:
        fast = exact_json(raw)
        if fast is not None:
            return fast
        text = _decode(raw, path)
        try:
            data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=_no_constants, parse_int=int64)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
        except ValueError as exc:
            raise CorruptFileError(f"{path}: invalid JSON: {exc}", path=path) from None
        except RecursionError:
            raise _json_too_deep(text, path) from None
        if text.count("[") + text.count("{") > MAX_DEPTH and _nested_too_deep(data):  # YAML's limit too
            raise _json_too_deep(text, path)
        if not isinstance(data, dict):
            raise CorruptFileError(
                f"{path}: expected an object of fields at the top, found {type(data).__name__}", path=path, line=1
            )
        return data

    def dump(self, data: dict[str, Any], previous: Parsed | None = None) -> Parsed:
        written = _keep_order(data, previous)
        return Parsed(self.dump_plain(written), written, canonical=written is data)

    @staticmethod
    def dump_plain(data: dict[str, Any]) -> bytes:
        # orjson: the stdlib drops to its pure-Python encoder when indenting
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def compact_json(data: Any, *, sort_keys: bool = False) -> bytes:
    """One-line JSON (event lines, hashes). The models keep numbers finite."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS if sort_keys else 0)


class Codec(Protocol):
    name: str
    suffix: str

    def parse(self, raw: bytes, path: str) -> Parsed: ...
    def load(self, raw: bytes, path: str) -> dict[str, Any]: ...
    def dump(self, data: dict[str, Any], previous: Parsed | None = None) -> Parsed: ...


YAML_CODEC = YamlCodec()
JSON_CODEC = JsonCodec()
CODECS: dict[str, Codec] = {".yaml": YAML_CODEC, ".json": JSON_CODEC}


def line_of(raw: bytes, loc: tuple[Any, ...]) -> int | None:
    """Line number (1-based) of the field at ``loc`` in a YAML or JSON file,
    for error messages; None when it cannot be found."""
    try:
        node = yaml.compose(raw.decode("utf-8-sig"), Loader=_BaseLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == part:
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
