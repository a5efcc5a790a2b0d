"""``models.trusted_episode`` against ``Episode.model_validate(data, context=TRUSTED)``.

The fast form validates the fields with pydantic's core minus the checks ``TRUSTED``
skips, and makes the model as pydantic does; it must give the same model (fields,
fields set, private attributes, dump) or the same error, for valid episodes and for
each of them with one field changed to something odd.
"""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from statekit import models
from statekit.models import TRUSTED, Episode, trusted_episode

from .reliability.conftest import size
from .test_parsing_fast import _ODD, episodes


def _outcome(make: Any, data: Any) -> Any:
    try:
        model = make(copy.deepcopy(data))
    except PydanticValidationError as exc:
        return "error", [(e["type"], e["loc"]) for e in exc.errors()]
    assert type(model) is Episode
    return ("model", model, model.model_fields_set, model.__pydantic_private__, model.__pydantic_extra__,
            model.model_dump())


def _same(data: Any) -> None:
    assert _outcome(trusted_episode, data) == _outcome(lambda d: Episode.model_validate(d, context=TRUSTED), data)


def _same_text(text: str | bytes) -> Any:
    """JSON text (the index's column as SQLite gives it) read as ``model_validate_json`` reads it:
    the same model, or an error (the model reads text through its before-validator, as Python
    objects, so an invalid value's error may be worded as another type of error)."""
    got = _outcome(trusted_episode, text)
    want = _outcome(lambda d: Episode.model_validate_json(d, context=TRUSTED), text)
    assert got == want or got[0] == want[0] == "error"
    return got


def test_the_fast_form_is_in_use() -> None:
    # with the pinned pydantic the schema is the one the fast form knows; an upgrade that changes it
    # falls back to the model (correct, slower): this says so rather than let the list queries slow down
    assert models._fast().validate is not None


@settings(max_examples=size(100, 400), suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_valid_episodes_are_the_model(data: dict[str, Any]) -> None:
    _same(data)


@settings(max_examples=size(150, 600), suppress_health_check=[HealthCheck.too_slow])
@given(episodes(), st.data())
def test_each_field_changed_is_the_model_or_its_error(data: dict[str, Any], draw: Any) -> None:
    changed = dict(data)
    field = draw.draw(st.sampled_from([*Episode.model_fields, "unknown_field"]))
    if draw.draw(st.integers(0, 5)) == 0:
        changed.pop(field, None)
    else:
        changed[field] = draw.draw(_ODD)
    _same(changed)
    _same_text(json.dumps(changed))  # (NaN, big numbers and all, as the strict reader sees them)


@settings(max_examples=size(100, 400), suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_json_text_is_the_same_model_as_its_data(data: dict[str, Any]) -> None:
    text = json.dumps(data)
    assert _same_text(text) == _same_text(text.encode()) == _outcome(trusted_episode, data)


def test_not_a_dict_and_the_edges() -> None:
    for data in (None, [], 1, {}, {"show_id": "a"}):
        _same(data)
    for text in ("x", "", "[]", "null", "{}", b"{", '{"show_id": "a"}'):  # text is JSON
        assert _same_text(text)[0] == "error"
    assert _outcome(trusted_episode, None)[0] == "error"


def test_models_are_their_own() -> None:
    data = Episode(show_id="s", episode_id="e", stage="a", version=1, created_at="2026-01-01T00:00:00Z",
                   updated_at="2026-01-01T00:00:00Z", stage_entered_at="2026-01-01T00:00:00Z",
                   metadata={"tags": ["x"]}, costs={"a": 1.0}).model_dump(mode="json")
    one, two = trusted_episode(data), trusted_episode(data)
    assert one.metadata is not data["metadata"] and one.metadata["tags"] is not data["metadata"]["tags"]
    one.metadata["tags"].append("y")  # a caller's change stays in its model
    assert data["metadata"]["tags"] == ["x"] and two.metadata["tags"] == ["x"]
    marked = one.with_pending("/x/episode.yaml", ["title"])
    assert marked.pending == {"path": "/x/episode.yaml", "fields": ["title"], "error": None}
    assert one.pending is None and two.pending is None
    one._pending = {"path": "p", "fields": None, "error": None}  # each model's private attributes are its own
    assert two.pending is None and trusted_episode(data).pending is None
    assert one.model_copy(update={"title": "t"}).title == "t"
    again = pickle.loads(pickle.dumps(two))  # (as a pool's worker would send one)
    assert again == two and again.model_fields_set == two.model_fields_set and again.pending is None


def test_without_the_fast_form_it_asks_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_FAST", [models._Fast(None, {})])
    data = Episode(show_id="s", episode_id="e", stage="a", version=1, created_at="2026-01-01T00:00:00Z",
                   updated_at="2026-01-01T00:00:00Z", stage_entered_at="2026-01-01T00:00:00Z").model_dump(mode="json")
    assert _outcome(trusted_episode, data) == _outcome(lambda d: Episode.model_validate(d, context=TRUSTED), data)
    assert _outcome(trusted_episode, {**data, "version": "1"})[0] == "error"
    text = json.dumps(data)
    assert _outcome(trusted_episode, text) == _outcome(lambda d: Episode.model_validate_json(d, context=TRUSTED), text)
    assert _outcome(trusted_episode, text) == _outcome(trusted_episode, data)
