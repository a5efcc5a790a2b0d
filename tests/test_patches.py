"""statekit.patches makes standard JSON Patches (RFC 6902): checked against the jsonpatch library."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import patches
from statekit.patches import PatchError, apply, diff

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=8))
keys = st.text(alphabet="ab~/_.0", min_size=0, max_size=4)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(keys, inner, max_size=4)), max_leaves=20)
documents = st.dictionaries(keys, json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(documents, documents)
def test_a_patch_turns_one_document_into_the_other(before: dict[str, Any], after: dict[str, Any]) -> None:
    patch = diff(before, after)
    assert apply(before, patch) == after
    assert jsonpatch.apply_patch(before, patch) == after  # the standard's reference reading agrees
    mine = copy.deepcopy(before)
    assert apply(mine, patch, in_place=True) is mine and mine == after  # replay's last-version-only way


@settings(max_examples=100, deadline=None)
@given(documents, st.lists(json_values, max_size=3))
def test_a_list_that_grew_gets_adds_for_the_new_items_only(doc: dict[str, Any], more: list[Any]) -> None:
    before = {**doc, "error_history": [1, {"kind": "x"}]}
    after = {**before, "error_history": [1, {"kind": "x"}, *more]}
    patch = diff(before, after)
    assert all(op["op"] == "add" for op in patch) and len(patch) == len(more)
    assert jsonpatch.apply_patch(before, patch) == after


def test_json_types_are_kept_apart() -> None:
    assert diff({"a": 1}, {"a": 1.0}) == [{"op": "replace", "path": "/a", "value": 1.0}]
    assert diff({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]


def test_apply_leaves_its_input_alone() -> None:
    doc = {"a": {"b": [1]}}
    apply(doc, [{"op": "add", "path": "/a/b/1", "value": 2}])
    assert doc == {"a": {"b": [1]}}


@pytest.mark.parametrize("patch", [
    {"op": "add"}, [{"op": "move", "path": "/a", "from": "/b"}], [{"op": "remove", "path": "/missing"}],
    [{"op": "replace", "path": "/a/b/9", "value": 1}], [{"op": "add", "path": "a"}], [{"op": "add", "path": "/a"}],
    [{"op": "add", "path": "/a/b/01", "value": 1}], [{"op": "replace", "path": "/a/b/0/x", "value": 1}],
])
def test_a_patch_that_does_not_fit_is_refused(patch: Any) -> None:
    with pytest.raises(PatchError):
        apply({"a": {"b": [1]}}, patch)


def test_a_number_that_changes_type_inside_an_object_is_in_the_patch() -> None:
    """1 == 1.0 == True in Python, and so are objects holding them: the patch must still say it."""
    before = {"metadata": {"n": 1, "flags": [1, 2]}, "title": "t"}
    for after in ({"metadata": {"n": 1.0, "flags": [1, 2]}, "title": "t"},
                  {"metadata": {"n": True, "flags": [1, 2]}, "title": "t"},
                  {"metadata": {"n": 1, "flags": [1, 2.0]}, "title": "t"}):
        patch = patches.diff(before, after)
        assert patch, after
        got = patches.apply(before, patch)
        assert json.dumps(got, sort_keys=True) == json.dumps(after, sort_keys=True)
    assert patches.diff(before, {"title": "t", "metadata": {"flags": [1, 2], "n": 1}}) == []  # order is no change


def test_a_store_records_a_metadata_number_changing_type(tmp_path) -> None:
    from statekit import Store

    store = Store.init(tmp_path / "s", "archive")
    store.create("sh", "e1", metadata={"n": 1})
    store.update("sh", "e1", metadata={"n": 1.0})
    assert store.verify().problems == []
    assert type(store.history("sh", "e1")[-1].metadata["n"]) is float


def _reference_diff(a: dict[str, Any], b: dict[str, Any], path: str = "") -> list[dict[str, Any]]:
    """The diff as it was written before its fast paths (keys compared one by one, every
    value through ``_same``): the fast one must give exactly these operations, in this order."""
    ops: list[dict[str, Any]] = []
    for key in a:
        if key not in b:
            ops.append({"op": "remove", "path": f"{path}/{patches._escape(key)}"})
    for key, new in b.items():
        if key not in a:
            ops.append({"op": "add", "path": f"{path}/{patches._escape(key)}", "value": new})
        elif not patches._same(a[key], new):
            where = f"{path}/{patches._escape(key)}"
            old = a[key]
            if isinstance(old, dict) and isinstance(new, dict):
                ops.extend(_reference_diff(old, new, where))
            elif isinstance(old, list) and isinstance(new, list) and len(new) > len(old) and all(
                    patches._same(x, y) for x, y in zip(old, new)):
                ops.extend({"op": "add", "path": f"{where}/{i}", "value": new[i]} for i in range(len(old), len(new)))
            else:
                ops.append({"op": "replace", "path": where, "value": new})
    return ops


mixed = st.one_of(st.just(1), st.just(1.0), st.just(True), st.just(0), st.just(0.0), st.just(False), st.just(None),
                  st.just(""), st.just([]), st.just({}), st.just([1]), st.just([1.0]), st.just({"a": 1}),
                  st.just({"a": True}))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(keys, st.one_of(json_values, mixed), max_size=6),
       st.dictionaries(keys, st.one_of(json_values, mixed), max_size=6), st.booleans())
def test_the_diff_is_the_plain_key_by_key_one(before: dict[str, Any], after: dict[str, Any], same_keys: bool) -> None:
    if same_keys:  # the fast path for documents with the same keys (an episode's, write after write)
        after = {k: after.get(k, v if isinstance(v, (int, float)) and not isinstance(v, bool) else [])
                 for k, v in before.items()}
    assert diff(before, after) == _reference_diff(before, after)
    assert _same_as_text(diff(before, after)) == _same_as_text(_reference_diff(before, after))


def _same_as_text(ops: list[dict[str, Any]]) -> str:
    return json.dumps(ops, sort_keys=True)  # True, 1 and 1.0 told apart in the values


@pytest.mark.parametrize(("before", "after"), [
    ({"a": 1, "b": 2}, {"a": 1, "c": 2}),  # as many keys, not the same ones: the plain way
    ({"a": 1, "b": {"x": 1, "y": 2}}, {"a": 2, "b": {"x": 1, "z": 2}}),  # ... one level down
    ({"a/b": 1, "c~d": 2}, {"a/b": 2, "c~d": 3}),  # escaped keys on the same-keys way
    ({"a": 1, "b": None}, {"a": 1.0, "b": "x"}),  # a scalar that changes type
])
def test_documents_with_as_many_keys_diff_as_the_plain_way(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert diff(before, after) == _reference_diff(before, after)
    assert jsonpatch.apply_patch(before, diff(before, after)) == after
