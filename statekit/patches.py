"""JSON Patch (RFC 6902) between two versions of an episode's data: pure, no I/O.

Each event of a chained log carries the patch from the previous version's
data to its own (``add``, ``remove`` and ``replace`` operations with RFC 6901
pointers), so replaying the log rebuilds any version. The format is the
standard one (``jsonpatch``, ``jq`` users and every JSON Patch library read
it; ``tests/test_patches.py`` checks every patch made here against the
``jsonpatch`` library); the diff is made here rather than by
``jsonpatch.make_patch`` because that costs about 0.5 ms per write, more than
the write path's whole budget, where this one costs tens of microseconds on
an episode: it compares dicts key by key, and a list that only grew (an
episode's ``error_history``) gets ``add`` operations for the new items
instead of being written out again.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

Patch = list[dict[str, Any]]


class PatchError(ValueError):
    """A patch that does not apply to the document (a damaged or forged log)."""


def _escape(key: str) -> str:
    if "~" in key or "/" in key:
        return key.replace("~", "~0").replace("/", "~1")
    return key  # (most keys: no new string)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (``1 == 1.0 == True`` in Python, but not in a file), all the
    way down: two objects or arrays Python finds equal are the same only if their
    canonical texts are too (compared in C), else value by value."""
    if type(a) is not type(b) or a != b:
        return False
    if (type(a) is not dict and type(a) is not list) or not a:  # equal and empty: nothing to tell apart
        return True
    try:
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not plain JSON data (an integer beyond 64 bits, a key that is not text)
        if type(a) is dict:
            return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
        return all(_same(x, y) for x, y in zip(a, b))


def diff(before: dict[str, Any], after: dict[str, Any]) -> Patch:
    """The patch that turns ``before`` into ``after`` (both plain JSON data)."""
    ops: Patch = []
    _diff_dict(before, after, "", ops)
    return ops


_SCALARS = frozenset((str, int, float, bool, type(None)))
"""The types ``_same`` compares with ``==`` alone (checked inline: most of an episode's fields)."""


_MISSING: Any = object()


def _diff_dict(a: dict[str, Any], b: dict[str, Any], path: str, ops: Patch) -> None:
    if len(a) == len(b):  # the usual case: no key comes or goes (an episode's data, write after write)
        found = _diff_same_keys(a, b, path)
        if found is not None:
            ops += found
            return
    same_keys = a.keys() == b.keys()
    if not same_keys:
        for key in a:
            if key not in b:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
    for key, new in b.items():
        if not same_keys and key not in a:
            ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": new})
            continue
        old = a[key]
        kind = type(new)
        if kind is type(old) and kind in _SCALARS and old == new:  # ``_same`` for a scalar, without the call
            continue
        if not _same(old, new):  # the path is only built for what changed
            _diff_value(old, new, f"{path}/{_escape(key)}", ops)


def _diff_same_keys(a: dict[str, Any], b: dict[str, Any], path: str) -> Patch | None:
    """``_diff_dict``'s operations when ``a`` has every key of ``b`` (and as many keys: the
    same ones), without comparing the key sets first; None as soon as a key of ``b`` is not
    in ``a`` (the caller then takes the plain way). A scalar that changed is a ``replace``
    without ``_same`` and ``_diff_value`` (what they would decide for it)."""
    ops: Patch = []
    get = a.get
    for key, new in b.items():
        old = get(key, _MISSING)
        if old is _MISSING:
            return None
        kind = type(new)
        if kind is type(old) and kind in _SCALARS:
            if old != new:
                ops.append({"op": "replace", "path": f"{path}/{_escape(key)}", "value": new})
        elif not _same(old, new):
            _diff_value(old, new, f"{path}/{_escape(key)}", ops)
    return ops


def _diff_value(old: Any, new: Any, where: str, ops: Patch) -> None:
    """``old`` and ``new`` differ: the operations that turn one into the other."""
    if isinstance(old, dict) and isinstance(new, dict):
        _diff_dict(old, new, where, ops)
    elif isinstance(old, list) and isinstance(new, list) and len(new) > len(old) and all(
            _same(x, y) for x, y in zip(old, new)):
        ops.extend({"op": "add", "path": f"{where}/{i}", "value": new[i]} for i in range(len(old), len(new)))
    else:
        ops.append({"op": "replace", "path": where, "value": new})


class _Pointers(dict):  # type: ignore[type-arg]
    """A pointer of one or two keys (no ``~``) -> (the first key, or None for one key; the last key);
    None for any other pointer. Filled as pointers are met (statekit's patches name few), up to a bound."""

    def __missing__(self, path: str) -> tuple[str | None, str] | None:
        found = None  # (a pointer that is no text raises TypeError, or is no key of a dict)
        if path[:1] == "/" and "~" not in path:
            first, slash, key = path[1:].partition("/")
            if not slash:
                found = (None, first)
            elif "/" not in key:
                found = (first, key)
        if len(self) < 4096:
            self[path] = found
        return found


_PLAIN_POINTERS = _Pointers()


def apply(doc: dict[str, Any], patch: Any, *, in_place: bool = False, copy_values: bool = True) -> dict[str, Any]:
    """``doc`` with ``patch`` applied (a new document; ``doc`` is not changed, unless
    ``in_place``: then ``doc`` itself is changed and returned, which saves copying the
    whole document per patch when only the last version is wanted). ``copy_values=False``:
    the operations' values are put in the document as they are, not copied (for a patch
    freshly parsed that nothing else uses: later patches may then change them).
    ``PatchError`` if the patch is not one or does not fit the document.

    The usual operation (an ``add`` or ``replace`` of a key of the document, or of an object one
    key down: what statekit's own patches hold) is done without walking its pointer
    (``_PLAIN_POINTERS``); any other goes through ``_apply_op`` (``tests/test_patches.py`` holds
    both ways to the same documents and errors)."""
    if not isinstance(patch, list):
        raise PatchError("a patch must be a list of operations")
    out = doc if in_place else copy.deepcopy(doc)
    pointers = _PLAIN_POINTERS
    whole = type(out) is dict
    for op in patch:
        if whole and type(op) is dict:
            try:
                split, kind, value = pointers[op["path"]], op["op"], op["value"]
            except (KeyError, TypeError):  # a part missing, or a pointer that is no text: ``_apply_op`` says so
                split = None
            if split is not None and (kind == "replace" or kind == "add"):
                first, key = split
                parent = out if first is None else out.get(first)
                if type(parent) is dict and (kind == "add" or key in parent):
                    parent[key] = copy.deepcopy(value) if copy_values else value
                    continue
        _apply_op(out, op, copy_values)
    return out


def _apply_op(out: dict[str, Any], op: Any, copy_values: bool) -> None:
    """One operation of a patch applied to ``out`` in place (``PatchError`` if it does not fit)."""
    if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace") \
            or not isinstance(op.get("path"), str) or not op["path"].startswith("/"):
        raise PatchError(f"not a supported patch operation: {op!r}")
    tokens = op["path"][1:].split("/")
    if "~" in op["path"]:
        tokens = [_unescape(t) for t in tokens]
    parent: Any = out
    for token in tokens[:-1]:
        parent = _child(parent, token, op)
    last = tokens[-1]
    kind = op["op"]
    if kind != "remove" and "value" not in op:
        raise PatchError(f"{kind} without a value: {op!r}")
    if isinstance(parent, dict):
        if kind != "add" and last not in parent:
            raise PatchError(f"{kind} of a missing key: {op['path']}")
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op["value"]) if copy_values else op["value"]
    elif isinstance(parent, list):
        index = len(parent) if last == "-" and kind == "add" else _index(last, op)
        if index > len(parent) or (kind != "add" and index >= len(parent)):
            raise PatchError(f"{kind} past the end of a list: {op['path']}")
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]) if copy_values else op["value"])
        elif kind == "remove":
            del parent[index]
        else:
            parent[index] = copy.deepcopy(op["value"]) if copy_values else op["value"]
    else:
        raise PatchError(f"{op['path']} does not lead into an object or a list")


def _index(token: str, op: dict[str, Any]) -> int:
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"not a list index: {op['path']}")
    return int(token)


def _child(parent: Any, token: str, op: dict[str, Any]) -> Any:
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"no such key on the way: {op['path']}")
        return parent[token]
    if isinstance(parent, list):
        index = _index(token, op)
        if index >= len(parent):
            raise PatchError(f"past the end of a list on the way: {op['path']}")
        return parent[index]
    raise PatchError(f"{op['path']} does not lead into an object or a list")
