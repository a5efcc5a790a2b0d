"""Unique metadata keys: values no two episodes of a store may share.

``unique: [archive_identifier]`` in ``statekit.yaml`` names top-level keys of
``metadata``. Values are compared as JSON, after one normalisation:

- a number is its value: ``1`` and ``1.0`` are the same (a hand edit or
  another tool may write either), ``true`` is not ``1``, ``"1"`` is not ``1``;
- text is compared exactly: ``"A"`` and ``"a"``, ``"a"`` and ``"a "``, or
  the two Unicode spellings of ``"é"``, are different values (archive
  identifiers are case-sensitive; statekit does not guess which spellings
  a person meant to be the same);
- lists and mappings compare by content (a mapping's key order does not matter);
- a missing key and ``null`` are no value: never a duplicate.

Pure: no I/O. The store takes the locks and asks the index
(``Store._unique_claims``); the index keeps one row per claim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

_INT64 = 1 << 63
LOCK_BUCKETS = 256
"""Claims are serialized by one lock file per bucket of their hash
(``.statekit/locks/unique/<hh>.lock``): a bounded number of files, however
many values the store holds."""


def normalise(value: Any) -> Any:
    """``value`` with every integral float made an int (``1.0`` -> ``1``)."""
    if isinstance(value, float) and value.is_integer() and -_INT64 <= value < _INT64:
        return int(value)
    if isinstance(value, Mapping):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def canonical(value: Any) -> str | None:
    """The text two values are compared by; None for no value (missing or null)."""
    if value is None:
        return None
    return orjson.dumps(normalise(value), option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True)
class Claim:
    """One episode's value of one unique key."""

    key: str
    value: Any
    text: str
    """``canonical(value)``."""

    @property
    def sha256(self) -> str:
        """What the index keeps of the value (``unique_values.value_sha256``)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def bucket(self) -> str:
        """The name of the lock that serializes claims of this key and value."""
        digest = hashlib.sha256(f"{self.key}\0{self.text}".encode()).digest()
        return f"{digest[0] % LOCK_BUCKETS:02x}"


def claims(keys: Sequence[str], metadata: Mapping[str, Any] | None) -> list[Claim]:
    """The claims of an episode whose metadata is ``metadata``."""
    if not keys or not metadata:
        return []
    out = []
    for key in keys:
        text = canonical(metadata.get(key))
        if text is not None:
            out.append(Claim(key, metadata[key], text))
    return out


def new_claims(keys: Sequence[str], before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Claim]:
    """The claims ``after`` makes that ``before`` did not: the values a write
    must check (a value the episode already had is not checked again)."""
    if not keys or before is after:
        return []
    held = {c.key: c.text for c in claims(keys, before)}
    return [c for c in claims(keys, after) if held.get(c.key) != c.text]


def shown(value: Any) -> str:
    """A value as the one line of an error shows it (JSON, cut to 60 characters)."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."
