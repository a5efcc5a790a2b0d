"""The bad-input corpus (issue 5): damaged versions of real store files.

A ``Case`` turns the original bytes of one file (an episode file, its
``events.jsonl``, a checkpoint, ``statekit.yaml``) into damaged bytes, or
into something that is not a regular file (``NotAFile``). Cases are made
from the file itself, so the same case can be applied to any episode's file
(the CLI sample puts many damaged episodes into one store).

``build_history`` makes the "real" episode every case starts from: created
with metadata and files, moved, costed, a checkpoint saved, a leased run that
failed (so it has an error history with a traceback), released, moved again
and retitled: eight versions, three backups.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from statekit import Store

TARGETS = ("episode", "events", "checkpoint", "config")
CHECKPOINT_STAGE = "downloading"
MARKER_NAME = "CODE-WAS-EXECUTED"
"""A python tag in the corpus would create a file of this name if it ever ran."""


@dataclass(frozen=True)
class NotAFile:
    """Something other than a regular file where the file should be."""

    kind: str  # dir, dir-with-file, symlink-outside, symlink-dir, dangling, loop, fifo, socket, chardev


Damage = bytes | NotAFile


@dataclass(frozen=True)
class Case:
    target: str
    category: str
    label: str
    mutate: Callable[[bytes], Damage]


class Boom(RuntimeError):
    """Raised by a worker body in ``build_history`` (a failed leased run)."""


def build_history(store: Store, show: str, ep: str) -> None:
    """The rich episode the corpus damages (8 versions, 3 backups, 1 checkpoint)."""
    store.create(show, ep, title="Journey to the Stars",
                 metadata={"host": "Ada", "tags": ["space", "kids"], "n": 3, "ratio": 0.25,
                           "nested": {"a": {"b": [1, 2, {"c": None}]}}, "date": "2024-05-01"},
                 files={"audio": "assets/a.mp3"})
    store.advance(show, ep, "downloading", cost=0.02, message="fetching")
    store.save_checkpoint(show, ep, CHECKPOINT_STAGE, {"parts": [1, 2, 3], "url": "http://example.org/x"})
    try:
        with store.run(show, ep, "downloading", owner="worker-1") as _run:
            raise ConnectionError("network down")
    except ConnectionError:
        pass
    store.retry_now(show, ep, by="ops")
    store.advance(show, ep, "downloading", cost=0.01)
    store.update(show, ep, title="Journey to the Stars (remastered)")


# --- helpers ------------------------------------------------------------------------


def tree_state(base: str | os.PathLike[str], skip: str | os.PathLike[str] | None = None,
               content: bool = True) -> dict[str, Any]:
    """Every entry under ``base`` except the tree ``skip`` (symlinks never
    followed): a file's bytes (or, without ``content``, its size and mtime),
    a link's target, or the kind of anything else."""
    state: dict[str, Any] = {}
    skipped = os.fspath(skip) if skip is not None else None
    for folder, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) != skipped]
        for name in dirs + names:
            p = os.path.join(folder, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, base)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode) and content:
                with open(p, "rb") as f:
                    state[rel] = ("file", f.read())
            elif stat.S_ISREG(st.st_mode):
                state[rel] = ("file", st.st_size, st.st_mtime_ns)
            else:
                state[rel] = ("other", stat.S_IFMT(st.st_mode))
    return state


def _lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\n")


def _spread(n: int, total: int) -> list[int]:
    """``n`` offsets spread evenly over ``range(total)`` (all of them if n >= total)."""
    if n >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)})


class _RefLoader(yaml.SafeLoader):
    """An independent reading of YAML (PyYAML's pure-Python safe loader):
    timestamps stay text; duplicate keys and NaN/infinity are refused."""


_RefLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _ref_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    if len(keys) != len(set(map(repr, keys))):
        raise yaml.constructor.ConstructorError(None, None, "duplicate key", node.start_mark)
    return loader.construct_mapping(node, deep=True)


def _ref_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise yaml.constructor.ConstructorError(None, None, "not finite", node.start_mark)
    return value


_RefLoader.add_constructor("tag:yaml.org,2002:map", _ref_mapping)
_RefLoader.add_constructor("tag:yaml.org,2002:float", _ref_float)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def reference_json(raw: bytes) -> Any:
    """Strict JSON: duplicate keys, NaN and overflowing numbers refused."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate key")
        return dict(items)

    return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=pairs, parse_constant=_refuse_constant,
                      parse_float=_finite)


def reference_load(raw: bytes, fmt: str) -> Any:
    """The file's data as an independent parser reads it; raises on anything
    statekit must refuse too (used only to check what statekit accepted)."""
    if fmt == "json":
        return reference_json(raw)
    return yaml.load(raw.decode("utf-8-sig"), Loader=_RefLoader)


def _dump(data: Any, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(data, indent=2).encode() + b"\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def _load(raw: bytes, fmt: str) -> Any:
    return json.loads(raw) if fmt == "json" else yaml.safe_load(raw)


_HOLE = "zzplaceholderzz"


def _with_text(raw: bytes, fmt: str, edit: Callable[[Any], Any], text: str) -> bytes:
    """``raw``'s data, edited so that one value is a placeholder, dumped, and
    the placeholder replaced by ``text`` (raw YAML or JSON that no dumper
    would write: NaN, a python tag, an alias...)."""
    data = _load(raw, fmt)
    edit(data)
    out = _dump(data, fmt).decode()
    hole = f'"{_HOLE}"' if fmt == "json" else _HOLE
    assert hole in out, (hole, out)
    return out.replace(hole, text, 1).encode()


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value in ``data`` (mappings and lists)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


# --- categories for one structured file (YAML or JSON) --------------------------------


def _raw_cases(target: str, n_trunc: int | None, n_flip: int, n_zero: int, rng: random.Random,
               length: int) -> list[Case]:
    out = []
    offsets = range(length) if n_trunc is None else _spread(n_trunc, length)
    for k in offsets:
        out.append(Case(target, "truncate", f"truncate@{k}", lambda raw, k=k: raw[:k]))
    for i in range(n_flip):
        flips = 1 if i % 3 else rng.choice((2, 3, 8))
        picks = [(rng.random(), rng.randrange(8)) for _ in range(flips)]

        def flip(raw: bytes, picks: list[tuple[float, int]] = picks) -> bytes:
            data = bytearray(raw)
            for where, bit in picks:
                data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
            return bytes(data)

        out.append(Case(target, "bitflip", f"bitflip#{i}x{flips}", flip))
    for k in _spread(n_zero, length):
        # a crash after the size grew but before the data reached the disk: zeros, same length
        out.append(Case(target, "zero_tail", f"zeros@{k}", lambda raw, k=k: raw[:k] + bytes(len(raw) - k)))
    out.append(Case(target, "zero_tail", "zeros-appended", lambda raw: raw + bytes(4096)))
    out.append(Case(target, "zero_tail", "all-zeros", lambda raw: bytes(len(raw))))
    out.append(Case(target, "truncate", "empty", lambda raw: b""))
    return out


_BAD_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28",
             b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80")


def _utf8_cases(target: str, n: int, rng: random.Random) -> list[Case]:
    out = []
    for i in range(n):
        bad = _BAD_UTF8[i % len(_BAD_UTF8)]
        where = rng.random()
        mode = ("insert", "replace")[i % 2]

        def put(raw: bytes, bad: bytes = bad, where: float = where, mode: str = mode) -> bytes:
            k = int(where * len(raw))
            return raw[:k] + bad + raw[k + (len(bad) if mode == "replace" else 0):]

        out.append(Case(target, "invalid_utf8", f"utf8-{mode}-{bad.hex()}@{where:.2f}", put))
    out.append(Case(target, "invalid_utf8", "utf16-bom", lambda raw: b"\xff\xfe" + raw))
    out.append(Case(target, "invalid_utf8", "latin1-title", lambda raw: raw.replace(b"Journey", b"J\xf6urney", 1)))
    out.append(Case(target, "invalid_utf8", "utf8-bom", lambda raw: b"\xef\xbb\xbf" + raw))  # valid: read
    out.append(Case(target, "invalid_utf8", "nul-byte",
                    lambda raw: raw[: len(raw) // 2] + b"\x00" + raw[len(raw) // 2:]))
    out.append(Case(target, "invalid_utf8", "utf16", lambda raw: raw.decode("utf-8").encode("utf-16")))
    return out


def _structured_cases(target: str, fmt: str, sample: Any, scale: int, rng: random.Random) -> list[Case]:
    """Duplicate keys, NaN/Infinity, deep nesting, aliases, tags, wrong types,
    schema_version: made from the file's own data (``sample``)."""
    out: list[Case] = []
    add = out.append
    top = list(sample)
    scalar_paths = [p for p in _paths(sample) if isinstance(_get(sample, p), (int, float, str, bool))
                    and not isinstance(_get(sample, p), bool)]
    number_paths = [p for p in scalar_paths if isinstance(_get(sample, p), (int, float))]
    mappings = [p for p in _paths(sample) if isinstance(_get(sample, p), dict)] + [()]

    # duplicate keys: a top-level or nested key written twice (same value, or another)
    for path in mappings[: max(scale, 2)]:
        mapping = _get(sample, path) if path else sample
        for key in list(mapping)[:: max(1, len(mapping) // max(scale // 2, 1))]:
            for same_value in (True, False):
                def dup(raw: bytes, path: tuple[Any, ...] = path, key: str = key,
                        same_value: bool = same_value) -> bytes:
                    data = _load(raw, fmt)
                    where = _get(data, path) if path else data
                    if key not in where:
                        return raw
                    where[_HOLE] = where[key] if same_value else "other"
                    text = _dump(data, fmt).decode()
                    hole = f'"{_HOLE}"' if fmt == "json" else _HOLE
                    return text.replace(hole, json.dumps(key) if fmt == "json" else key, 1).encode()

                add(Case(target, "duplicate_key", f"dup-{'/'.join(map(str, path)) or '.'}:{key}:{same_value}", dup))

    # NaN and infinity in every kind of number the file holds
    tokens = (".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+999", "-1.0e999") if fmt == "yaml" else (
        "NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1.5e308e")
    for path in number_paths[: max(scale, 3)]:
        for token in tokens:
            add(Case(target, "nan_inf", f"nan-{'/'.join(map(str, path))}={token}",
                     lambda raw, path=path, token=token: _with_text(raw, fmt, lambda d: _set(d, path, _HOLE), token)))

    # deep nesting: under a free-form mapping if there is one, else at the top
    holder = next((p for p in (("metadata",), ("data",)) if p[0] in sample), None)
    for depth in (10, 60, 64, 65, 99, 100, 101, 200, 1000, 10_000, 100_000)[: max(scale + 3, 5)]:
        for style in ("block", "flow") if fmt == "yaml" else ("json",):
            def deep(raw: bytes, depth: int = depth, style: str = style) -> bytes:
                if style == "block":
                    body = yaml.safe_dump(_nest(min(depth, 300)), default_flow_style=False)
                    text = body if depth <= 300 else ("- " * depth) + "x\n"
                    nested = "\n".join("  " + line for line in text.splitlines())
                    return _with_text(raw, fmt, lambda d: _set(d, (*holder, "deep") if holder else ("deep",), _HOLE),
                                      "\n" + nested).replace(b": \n", b":\n")
                text = "[" * depth + "1" + "]" * depth if depth > 300 else json.dumps(_nest(depth))
                return _with_text(raw, fmt, lambda d: _set(d, (*holder, "deep") if holder else ("deep",), _HOLE), text)

            add(Case(target, "deep_nesting", f"deep-{style}-{depth}", deep))
    add(Case(target, "deep_nesting", "deep-unclosed", lambda raw: b"[" * 200_000 if fmt == "json" else b"- " * 200_000))

    if fmt == "yaml":
        # alias bombs and aliases where a plain value belongs
        laughs = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
        bomb = "l0: &l0 lol\n" + laughs
        add(Case(target, "alias_bomb", "billion-laughs-top", lambda raw: raw + b"\n" + bomb.encode()))
        add(Case(target, "alias_bomb", "billion-laughs-only", lambda raw: bomb.encode()))
        deep_bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        add(Case(target, "alias_bomb", "deep-alias-bomb", lambda raw: deep_bomb.encode() + raw))
        first_str = next((p for p in scalar_paths if isinstance(_get(sample, p), str)), None)
        if first_str is not None and len(first_str) == 1:
            key = first_str[0]
            add(Case(target, "alias_bomb", "alias-of-a-field",
                     lambda raw, key=key: raw.replace(f"\n{key}:".encode(), f"\nx_anchor: &a1 v\n{key}:".encode(), 1)
                     .replace(f"\n{key}: ".encode(), f"\n{key}: *a1 #".encode(), 1)))
        add(Case(target, "alias_bomb", "merge-key", lambda raw: raw + b"\nbase: &b {x: 1}\nmerged:\n  <<: *b\n"))
        add(Case(target, "alias_bomb", "self-recursive", lambda raw: raw + b"\nloop: &r [*r]\n"))
        add(Case(target, "alias_bomb", "anchor-only", lambda raw: raw.replace(b": ", b": &anc ", 1)))
        # tags: code execution would create MARKER_NAME in the working directory or /tmp
        marker = MARKER_NAME
        tags = {
            "apply-os-system": f'!!python/object/apply:os.system ["touch {marker}"]',
            "apply-subprocess": f'!!python/object/apply:subprocess.check_call [["touch", "{marker}"]]',
            "new-popen": f'!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
            "python-object": "!!python/object:os.system {}",
            "python-name": "!!python/name:os.system",
            "python-module": "!!python/module:os",
            "binary": "!!binary aGVsbG8=",
            "set": "!!set {a: null}",
            "omap": "!!omap [a: 1]",
            "custom-local": "!shell touch x",
            "verbatim": f"!<tag:yaml.org,2002:python/object/apply:os.system> [touch {marker}]",
            "str-on-number": "!!str 12",  # a legal tag: text
            "int-on-text": '!!int "3"',
        }
        for name, text in tags.items():
            for path in ([("title",)] if "title" in sample else []) + [(top[0],), ("zz_extra",)]:
                add(Case(target, "python_tag", f"tag-{name}@{'/'.join(path)}",
                         lambda raw, path=path, text=text: _with_text(raw, fmt, lambda d: _set(d, path, _HOLE), text)))
        tagged = b"\nzz_tagged: !x!os.system [touch " + marker.encode() + b"]\n"
        add(Case(target, "python_tag", "tag-directive",
                 lambda raw: b"%TAG !x! tag:yaml.org,2002:python/object/apply:\n---\n" + raw.replace(b"\n", tagged, 1)))
        add(Case(target, "python_tag", "tag-on-document", lambda raw: b"--- !!python/object:os.system\n" + raw))
        add(Case(target, "python_tag", "tag-on-key",
                 lambda raw: raw + f"? !!python/object/apply:os.system [touch {marker}]\n: 1\n".encode()))

    # wrong types: every top-level field, and a sample of nested ones
    wrong: list[Any] = [[], {}, "x", 7, 1.5, True, None, 10**30, -1, "", ["a", 1], {"k": "v"}]
    nested = [p for p in _paths(sample) if len(p) > 1]
    fields = [(k,) for k in top] + rng.sample(nested, min(len(nested), scale * 4))
    for path in fields:
        values = wrong if len(path) == 1 or scale > 3 else rng.sample(wrong, 4)
        for value in values:
            add(Case(target, "wrong_type", f"type-{'/'.join(map(str, path))}={json.dumps(value)[:12]}",
                     lambda raw, path=path, value=value: _dump(_edited(_load(raw, fmt), path, value), fmt)))
    for path in [(k,) for k in top][: max(2, scale)]:
        add(Case(target, "wrong_type", f"missing-{path[0]}",
                 lambda raw, key=path[0]: _dump({k: v for k, v in _load(raw, fmt).items() if k != key}, fmt)))
    for value in ([1, 2], "text", 3, None):
        add(Case(target, "wrong_type", f"top-is-{type(value).__name__}", lambda raw, value=value: _dump(value, fmt)))
    add(Case(target, "wrong_type", "unknown-field", lambda raw: _dump({**_load(raw, fmt), "zz_unknown": 1}, fmt)))

    # schema_version
    for value in (0, 1, 999, "x", -1, 1.5, True, None, "2", 2.0, [], {}, 10**40, "999"):
        add(Case(target, "schema_version", f"schema={json.dumps(value)}",
                 lambda raw, value=value: _dump({**_load(raw, fmt), "schema_version": value}, fmt)))
    add(Case(target, "schema_version", "schema-missing",
             lambda raw: _dump({k: v for k, v in _load(raw, fmt).items() if k != "schema_version"}, fmt)))
    return out


def _edited(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    try:
        _set(data, path, value)
    except (KeyError, IndexError, TypeError):
        pass
    return data


def _not_a_file_cases(target: str) -> list[Case]:
    kinds = ("dir", "dir-with-file", "symlink-outside", "symlink-dir", "dangling", "loop", "fifo", "socket",
             "chardev", "symlink-devzero")
    return [Case(target, "not_a_file", kind, lambda raw, kind=kind: NotAFile(kind)) for kind in kinds]


# --- the event log ------------------------------------------------------------------------


def _event_cases(sample: bytes, scale: int, rng: random.Random) -> list[Case]:
    out: list[Case] = []
    add = out.append
    n = len(sample.rstrip(b"\n").split(b"\n"))

    def line_edit(index: int, edit: Callable[[dict[str, Any]], Any],
                  raw_text: str | None = None) -> Callable[[bytes], bytes]:
        def apply(raw: bytes) -> bytes:
            lines = raw.rstrip(b"\n").split(b"\n")
            i = index % len(lines)
            event = json.loads(lines[i])
            if raw_text is None:
                result = edit(event)
                lines[i] = json.dumps(event if result is None else result, separators=(",", ":")).encode()
            else:
                edit(event)
                text = json.dumps(event, separators=(",", ":"))
                lines[i] = text.replace(f'"{_HOLE}"', raw_text, 1).encode()
            return b"\n".join(lines) + b"\n"

        return apply

    picks = sorted({0, n // 2, n - 1} if scale > 2 else {n // 2, n - 1})
    for i in picks:
        for key, same_value in (("version", True), ("version", False), ("kind", False), ("sha256", False)):
            def dup(raw: bytes, i: int = i, key: str = key, same_value: bool = same_value) -> bytes:
                lines = raw.rstrip(b"\n").split(b"\n")
                j = i % len(lines)
                event = json.loads(lines[j])
                value = event.get(key) if same_value else 999
                lines[j] = lines[j][:-1] + f',"{key}":{json.dumps(value)}}}'.encode()
                return b"\n".join(lines) + b"\n"

            add(Case("events", "duplicate_key", f"line{i}:dup-{key}:{same_value}", dup))
        for key in ("cost", "version", "at"):
            for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e400"):
                add(Case("events", "nan_inf", f"line{i}:{key}={token}",
                         line_edit(i, lambda e, key=key: e.__setitem__(key, _HOLE), token)))
        for depth in (50, 100, 1000, 100_000)[: max(scale, 2)]:
            text = "[" * depth + "]" * depth
            add(Case("events", "deep_nesting", f"line{i}:deep-{depth}",
                     line_edit(i, lambda e: e.__setitem__("message", _HOLE), text)))
        add(Case("events", "deep_nesting", f"line{i}:deep-unclosed",
                 line_edit(i, lambda e: e.__setitem__("message", _HOLE), "[" * 100_000)))
        for key in ("version", "at", "kind", "show_id", "episode_id", "sha256", "cost", "to_stage"):
            for value in ([], {}, "3", 3.0, True, None, -1, 10**30, ""):
                add(Case("events", "wrong_type", f"line{i}:{key}={json.dumps(value)}",
                         line_edit(i, lambda e, key=key, value=value: e.__setitem__(key, value))))
        for value in ([1], "text", 5, None):
            add(Case("events", "wrong_type", f"line{i}:is-{type(value).__name__}",
                     line_edit(i, lambda e, value=value: value if value is not None else "null")))
        for value in (0, 999, "x", -1, 1.5, None, True, "1"):
            add(Case("events", "schema_version", f"line{i}:schema={json.dumps(value)}",
                     line_edit(i, lambda e, value=value: e.__setitem__("schema_version", value))))
        add(Case("events", "python_tag", f"line{i}:yaml-tag",
                 line_edit(i, lambda e: e.__setitem__("message", _HOLE), "!!python/object/apply:os.system [x]")))
    # whole-line damage: dropped, repeated, swapped, junk, blank, CRLF, a line from another episode
    for i in range(n):
        add(Case("events", "line_edit", f"drop-line{i}",
                 lambda raw, i=i: b"\n".join(_drop(raw.rstrip(b"\n").split(b"\n"), i)) + b"\n"))
        add(Case("events", "line_edit", f"repeat-line{i}",
                 lambda raw, i=i: b"\n".join(_repeat(raw.rstrip(b"\n").split(b"\n"), i)) + b"\n"))
    for i in range(n - 1):
        add(Case("events", "line_edit", f"swap-lines{i}",
                 lambda raw, i=i: b"\n".join(_swap(raw.rstrip(b"\n").split(b"\n"), i)) + b"\n"))
    add(Case("events", "line_edit", "blank-line-middle", lambda raw: raw.replace(b"\n", b"\n\n", 2)))
    add(Case("events", "line_edit", "junk-line-middle", lambda raw: raw.replace(b"\n", b"\nnot json at all\n", 1)))
    add(Case("events", "line_edit", "junk-line-end", lambda raw: raw + b"garbage\n"))
    add(Case("events", "line_edit", "crlf", lambda raw: raw.replace(b"\n", b"\r\n")))
    add(Case("events", "line_edit", "no-final-newline", lambda raw: raw.rstrip(b"\n")))
    add(Case("events", "line_edit", "future-event", lambda raw: raw + _bump(raw, 1)))
    add(Case("events", "line_edit", "far-future-event", lambda raw: raw + _bump(raw, 5)))
    add(Case("events", "line_edit", "other-episode",
             lambda raw: raw.replace(b'"episode_id":"', b'"episode_id":"zz', 1)))
    add(Case("events", "line_edit", "reversed", lambda raw: b"\n".join(raw.rstrip(b"\n").split(b"\n")[::-1]) + b"\n"))
    return out


def _drop(lines: list[bytes], i: int) -> list[bytes]:
    return [x for j, x in enumerate(lines) if j != i]


def _repeat(lines: list[bytes], i: int) -> list[bytes]:
    return lines[: i + 1] + [lines[i]] + lines[i + 1:]


def _swap(lines: list[bytes], i: int) -> list[bytes]:
    lines = list(lines)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    return lines


def _bump(raw: bytes, ahead: int) -> bytes:
    last = json.loads(raw.rstrip(b"\n").split(b"\n")[-1])
    last["version"] += ahead
    return json.dumps(last, separators=(",", ":")).encode() + b"\n"


# --- the whole corpus ---------------------------------------------------------------------


def generate(originals: dict[str, bytes], fmt: str, *, full: bool, seed: int = 5) -> list[Case]:
    """Every case for the four files of one store (``originals``: target ->
    the file's bytes). ``full``: every truncation offset and the large
    samples (``make stress``); else a representative few per category.
    The event log, checkpoints and statekit.yaml are the same bytes in a
    YAML and a JSON store: at full size the JSON store takes a dozen cases
    per category of those, and all of its episode file's."""
    rng = random.Random(f"{seed}-{fmt}")
    scale = 6 if full else 1
    cases: list[Case] = []
    for target in TARGETS:
        raw = originals[target]
        file_fmt = "yaml" if target == "config" or (target == "episode" and fmt == "yaml") else "json"
        # every truncation offset of the episode file; a spread of 150 for the others
        n_trunc = (None if target == "episode" else 150) if full else 6
        n_flip = 80 if full else 4
        cases += _raw_cases(target, n_trunc, n_flip, 40 if full else 2, rng, len(raw))
        cases += _utf8_cases(target, 30 if full else 2, rng)
        if target == "events":
            cases += _event_cases(raw, scale, rng)
        else:
            cases += _structured_cases(target, file_fmt, _load(raw, file_fmt), scale, rng)
        cases += _not_a_file_cases(target)
    if not full:
        cases = _thin(cases, rng)
    elif fmt == "json":
        cases = [c for c in cases if c.target == "episode"] + _thin(
            [c for c in cases if c.target != "episode"], rng, per=12)
    return cases


def _thin(cases: list[Case], rng: random.Random, per: int = 2) -> list[Case]:
    """Every category of every target, ``per`` cases each (more of the raw damage)."""
    keep_per = {"not_a_file": 10, "truncate": 2 * per, "bitflip": 2 * per} if per > 2 else {
        "not_a_file": 4, "truncate": 4, "bitflip": 3}
    groups: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.target, case.category), []).append(case)
    out = []
    for (_target, category), group in groups.items():
        n = keep_per.get(category, per)
        out += group if len(group) <= n else rng.sample(group, n)
    return out


def category_of(label: str) -> str:
    return re.sub(r"[@#=:].*", "", label)
