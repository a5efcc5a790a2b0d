"""Plain block YAML of an episode's data, written without PyYAML's representer.

``codecs.YamlCodec.dump_plain`` writes a file with no comments to keep through
PyYAML (``yaml.dump`` with statekit's dumper: block style, key order kept,
``allow_unicode``, width 4096). Its representer and its resolver, run on every
value of every write, cost more CPU than the rest of a durable write. This
module writes the same bytes for the data an episode holds (mappings with text
keys, lists, text, integers, floats, booleans, null): the layout is fixed by
the block style, and each text value or key is written as PyYAML writes it,
asked of PyYAML once per distinct text and remembered (two common kinds, plain
names and the models' timestamps, are known without asking). Anything else
(a multi-line text, a very long one, a key PyYAML would not write as a simple
key, a type it does not know) returns None: the caller dumps with PyYAML.
``tests/test_codecs.py`` checks the bytes against PyYAML's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import yaml

LONGEST = 1000
"""Longer texts go to PyYAML (it may fold a line past its width)."""

SIMPLE_KEY = 128
"""A key this long or longer PyYAML writes as an explicit ``? key`` (asked, then declined)."""

REMEMBERED = 8192
"""Texts whose written form is remembered (the memory is emptied when full)."""

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*\Z")
"""Texts PyYAML writes as they are (no indicator, nothing a resolver could read as another type)..."""
_WORDS = frozenset(("yes", "no", "true", "false", "on", "off", "null"))
"""...except these words, in any case (booleans and null in YAML 1.1)."""
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z\Z")
"""The models' timestamps: PyYAML quotes them (plain, they would read back as timestamps)."""
_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")
"""Line breaks to YAML: a text holding one is written over several lines, indented by its place."""
_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?\Z")
"""Floats PyYAML writes plain (its float resolver's main form)."""


class Fallback(Exception):
    """This data is not one the block writer knows: PyYAML writes it."""


class BlockYaml:
    """``dump(data)``: the bytes ``ask``'s dumper writes for ``data``, or None.

    ``ask(obj)``: PyYAML's text for a small document (``{"k": text}`` or ``{text: 0}``),
    with the same dumper and options as the whole file."""

    def __init__(self, ask: Callable[[Any], str]) -> None:
        self.ask = ask
        self._values: dict[str, str | None] = {}
        self._keys: dict[str, str | None] = {}
        self._floats: dict[float, str] = {}
        """Float -> its text (not 0.0: -0.0 is a key equal to it, written otherwise)."""
        self._heads: dict[int, dict[str, str]] = {}
        """Indent -> key -> the key's line start (``<indent><key>:``): an episode's keys come back every write."""
        self._lock = threading.Lock()

    def dump(self, data: dict[str, Any]) -> bytes | None:
        if type(data) is not dict or not data:
            return None
        out: list[str] = []
        try:
            self._mapping(data, 0, out, inline=False)
        except Fallback:
            return None
        return "".join(out).encode("utf-8")

    # --- texts -------------------------------------------------------------------

    def _remember(self, memory: dict[str, str | None], text: str, form: str | None) -> None:
        with self._lock:
            if len(memory) >= REMEMBERED:
                memory.clear()
            memory[text] = form

    def value(self, text: str) -> str:
        """``text`` as a value (after ``key: `` or ``- ``)."""
        form = self._values.get(text, "")  # the texts of the last writes (a timestamp is new each time)
        if form:
            return form
        if form is None:
            raise Fallback
        if _TIMESTAMP.match(text):  # (first: a timestamp is new each write; no plain text starts with a digit)
            return f"'{text}'"
        if len(text) <= LONGEST and _PLAIN.match(text) and text.lower() not in _WORDS:
            self._remember(self._values, text, text)
            return text
        if form == "":
            form = None
            if len(text) <= LONGEST and not _BREAKS.search(text):
                written = self.ask({"k": text})
                if written.startswith("k: ") and written.endswith("\n") and written.count("\n") == 1:
                    form = written[3:-1]
            self._remember(self._values, text, form)
        if form is None:
            raise Fallback
        return form

    def key(self, text: str) -> str:
        """``text`` as a mapping key (before ``:``)."""
        if len(text) < SIMPLE_KEY and _PLAIN.match(text) and text.lower() not in _WORDS:
            return text
        form = self._keys.get(text, "")
        if form == "":
            form = None
            if len(text) <= LONGEST and not _BREAKS.search(text):
                written = self.ask({text: 0})
                if written.endswith(": 0\n") and written.count("\n") == 1 and not written.startswith("?"):
                    form = written[:-4]
            self._remember(self._keys, text, form)
        if form is None:
            raise Fallback
        return form

    def scalar(self, value: Any) -> str:
        kind = type(value)
        if kind is str:
            return self.value(value)
        if value is None:
            return "null"
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return str(value)
        if kind is float:
            text = self._floats.get(value)  # type: ignore[assignment]
            if text is not None:
                return text
            text = repr(value).lower()
            if "." not in text and "e" in text:
                text = text.replace("e", ".0e", 1)
            if _FLOAT.match(text):  # not nan or inf (PyYAML's own spellings), nor anything unexpected
                if value:
                    with self._lock:
                        if len(self._floats) >= REMEMBERED:
                            self._floats.clear()
                        self._floats[value] = text
                return text
        raise Fallback

    # --- the layout ------------------------------------------------------------------

    def _mapping(self, data: dict[str, Any], indent: int, out: list[str], inline: bool) -> None:
        """A non-empty mapping's lines at ``indent``; ``inline``: its first key follows a ``- ``."""
        pad = " " * indent
        heads = self._heads.get(indent)
        if heads is None:
            heads = self._heads.setdefault(indent, {})
        known = self._values.get
        for i, (k, v) in enumerate(data.items()):
            first = inline and i == 0
            head = None if first else heads.get(k)  # only text keys are kept: another type never matches
            if head is None:
                if type(k) is not str:
                    raise Fallback
                head = ("" if first else pad) + self.key(k) + ":"
                if not first:
                    if len(heads) >= REMEMBERED:
                        heads.clear()
                    heads[k] = head
            kind = type(v)
            if kind is str:  # ``scalar``'s common cases inline: a text seen before, null, a whole number
                form = known(v)
                out.append(f"{head} {form if form else self.value(v)}\n")
            elif v is None:
                out.append(f"{head} null\n")
            elif kind is int:
                out.append(f"{head} {v}\n")
            elif kind is dict:
                if v:
                    out.append(head + "\n")
                    self._mapping(v, indent + 2, out, inline=False)
                else:
                    out.append(head + " {}\n")
            elif kind is list:
                if v:
                    out.append(head + "\n")
                    self._sequence(v, indent, out, inline=False)  # PyYAML does not indent a list under a key
                else:
                    out.append(head + " []\n")
            else:
                out.append(f"{head} {self.scalar(v)}\n")

    def _sequence(self, items: list[Any], indent: int, out: list[str], inline: bool) -> None:
        """A non-empty list's items at ``indent``; ``inline``: its first item follows a ``- ``."""
        pad = " " * indent
        for i, item in enumerate(items):
            head = ("" if inline and i == 0 else pad) + "- "
            kind = type(item)
            if kind is dict or kind is list:
                if item:
                    out.append(head)
                    (self._mapping if kind is dict else self._sequence)(item, indent + 2, out, inline=True)
                else:
                    out.append(head + ("{}\n" if kind is dict else "[]\n"))
            else:
                out.append(head + self.scalar(item) + "\n")


_WRITERS: dict[type, BlockYaml] = {}


def block_dump(data: dict[str, Any], dumper: type) -> bytes | None:
    """``BlockYaml.dump`` asking ``yaml.dump`` with ``dumper`` and the options of
    ``codecs.YamlCodec.dump_plain`` (block style, key order, unicode, width 4096)."""
    writer = _WRITERS.get(dumper)
    if writer is None:
        writer = _WRITERS[dumper] = BlockYaml(lambda obj: yaml.dump(
            obj, Dumper=dumper, sort_keys=False, allow_unicode=True, width=4096, default_flow_style=False))
    return writer.dump(data)
