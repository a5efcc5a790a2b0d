"""Bad input gets its own error class and one line, and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statekit import (
    CorruptFileError,
    EpisodeNotFoundError,
    InvalidIdError,
    InvalidTransitionError,
    SchemaVersionError,
    ShowNotFoundError,
    StatekitError,
    Store,
    UnknownStageError,
)
from statekit.models import EPISODE_SCHEMA

from .conftest import episode_file, snapshot

Op = Callable[[Store, str, str], Any]

OPERATIONS: dict[str, Op] = {
    "get": lambda s, show, ep: s.get(show, ep),
    "events": lambda s, show, ep: s.events(show, ep),
    "advance": lambda s, show, ep: s.advance(show, ep, "downloading"),
    "update": lambda s, show, ep: s.update(show, ep, title="x"),
    "save_checkpoint": lambda s, show, ep: s.save_checkpoint(show, ep, "downloading", {"a": 1}),
    "load_checkpoint": lambda s, show, ep: s.load_checkpoint(show, ep, "downloading"),
    "delete": lambda s, show, ep: s.delete(show, ep),
    "create": lambda s, show, ep: s.create(show, ep),
}


@pytest.fixture
def populated(any_store: Store) -> Store:
    for show, ep in (("s", "e"), ("s", "other"), ("t", "e")):
        any_store.create(show, ep, title=f"{show}/{ep}")
    any_store.advance("s", "other", "downloading", cost=0.5)
    any_store.save_checkpoint("t", "e", "discovered", {"x": [1, 2]})
    return any_store


def expect(store: Store, error: type[StatekitError], call: Callable[[], Any]) -> StatekitError:
    before = snapshot(store.root)
    with pytest.raises(error) as info:
        call()
    assert snapshot(store.root) == before, "a refused call changed files"
    line = info.value.one_line()
    assert "\n" not in line and len(line) < 400
    return info.value


BAD_IDS = ["../x", "/etc", "", "x" * 200, "..", "a/b", "UPPER", "ep\n", "."]


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_before_any_file_is_touched(populated: Store, name: str, bad: str) -> None:
    op = OPERATIONS[name]
    expect(populated, InvalidIdError, lambda: op(populated, bad, "e"))
    expect(populated, InvalidIdError, lambda: op(populated, "s", bad))


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_stage_ids_are_refused(populated: Store, bad: str) -> None:
    expect(populated, InvalidIdError, lambda: populated.advance("s", "e", bad))
    expect(populated, InvalidIdError, lambda: populated.save_checkpoint("s", "e", bad, {}))
    expect(populated, InvalidIdError, lambda: populated.load_checkpoint("s", "e", bad))


@pytest.mark.parametrize("name", [n for n in OPERATIONS if n != "create"])
def test_unknown_show_and_episode(populated: Store, name: str) -> None:
    op = OPERATIONS[name]
    expect(populated, ShowNotFoundError, lambda: op(populated, "nope", "e"))
    expect(populated, EpisodeNotFoundError, lambda: op(populated, "s", "nope"))


def test_unknown_stage_and_illegal_move(populated: Store) -> None:
    expect(populated, UnknownStageError, lambda: populated.advance("s", "e", "nowhere"))
    error = expect(populated, InvalidTransitionError, lambda: populated.advance("s", "e", "converted"))
    assert "downloading" in error.one_line()


def damage(store: Store, kind: str) -> Path:
    path = episode_file(store, "s", "e")
    raw = path.read_bytes()
    if kind == "truncated-early":
        path.write_bytes(raw[:25])
    elif kind == "truncated-mid":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "schema-999":
        text = raw.decode()
        path.write_text(text.replace(f"schema_version: {EPISODE_SCHEMA}", "schema_version: 999").replace(
            f'"schema_version": {EPISODE_SCHEMA}', '"schema_version": 999'))
    elif kind == "not-a-mapping":
        path.write_bytes(b"- just\n- a list\n" if path.suffix == ".yaml" else b"[1, 2]")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    return path


DAMAGE = {
    "truncated-early": (CorruptFileError, StatekitError),
    "truncated-mid": (CorruptFileError, StatekitError),
    "binary": (CorruptFileError,),
    "empty": (CorruptFileError,),
    "schema-999": (SchemaVersionError,),
    "not-a-mapping": (CorruptFileError,),
    "directory": (CorruptFileError,),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("name", ["get", "events", "advance", "update", "save_checkpoint"])
def test_a_damaged_file_is_reported_and_nothing_is_changed(populated: Store, kind: str, name: str) -> None:
    path = damage(populated, kind)
    before = snapshot(populated.root)
    with pytest.raises(DAMAGE[kind]) as info:
        OPERATIONS[name](populated, "s", "e")
    line = info.value.one_line()
    assert str(path) in line and "\n" not in line
    assert snapshot(populated.root) == before  # the damaged file too: never rewritten
    # the other episodes still work
    assert populated.get("s", "other").stage == "downloading"
    assert populated.advance("t", "e", "downloading").version == 3


def test_damaged_show_yaml_is_reported(populated: Store) -> None:
    show = Path(populated.root, "shows/s/show.yaml")
    show.write_bytes(b"episodes: [e, other\n")
    expect(populated, CorruptFileError, lambda: populated.create("s", "new"))
    expect(populated, CorruptFileError, lambda: populated.delete("s", "e"))
    assert populated.advance("s", "e", "downloading").version == 2  # episodes do not need show.yaml
