"""Bad input gets its own error class and one line, and changes nothing."""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import pickle
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from statekit import (
    CorruptFileError,
    EpisodeNotFoundError,
    InvalidIdError,
    InvalidTransitionError,
    LockTimeoutError,
    NotReadyError,
    SchemaVersionError,
    ShowNotFoundError,
    StatekitError,
    StorageError,
    Store,
    UnknownStageError,
    ValidationError,
    VersionConflictError,
)
from statekit.files import Disk
from statekit.models import (
    EPISODE_SCHEMA,
    Approval,
    AssetRecord,
    CacheConfig,
    CheckpointRecord,
    Episode,
    ErrorRecord,
    Event,
    GCSConfig,
    Lease,
    Show,
    StoreConfig,
    UploadRecord,
)
from statekit.pipeline import Pipeline, RetryPolicy

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
    if name in ("get", "events") and kind != "schema-999":
        # reads give the committed version, which the log rebuilds, and get says why the file is not it
        # (a file of a newer schema is refused: a newer statekit may have written it)
        answer = OPERATIONS[name](populated, "s", "e")
        if name == "get":
            assert answer.pending is not None and str(path) in answer.pending["error"]
    else:
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


# --- issue 12: bad input that escaped as a crash ------------------------------------------


def folders(root: str | Path) -> list[str]:
    """Every folder under ``root`` (``snapshot`` sees files only; an empty folder matters too)."""
    return sorted(os.path.relpath(d, root) for d, _dirs, _files in os.walk(root)
                  if not os.path.relpath(d, root).startswith(".statekit"))


def test_costs_whose_total_overflows_are_refused_before_anything_is_written(any_store: Store) -> None:
    store = any_store
    store.create("s", "e")
    store.advance("s", "e", "downloading", cost=1e308)
    error = expect(store, ValidationError, lambda: store.advance("s", "e", "downloaded", cost=1e308))
    assert error.field == "cost" and "non-negative finite" in error.hint
    assert store.advance("s", "e", "downloaded", cost=1.0).cost_total == 1e308  # a finite total still adds up
    expect(store, ValidationError, lambda: store.advance("s", "e", "converting", cost=1.7e308))  # one stage's sum


def test_run_costs_whose_total_overflows_are_refused(store: Store) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading") as run:
        run.cost(1e308)
        expect(store, ValidationError, lambda: run.cost(1e308))
        expect(store, ValidationError, lambda: run.checkpoint({"part": 1}, cost=1e308))
        assert store.load_checkpoint("s", "e", "downloading") is None  # the refused checkpoint was not written
    assert store.get("s", "e").costs == {"downloading": 1e308}


def test_hand_edited_costs_that_add_up_past_a_float_are_invalid(store: Store) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    path.write_text(path.read_text().replace("costs: {}", "costs: {discovered: 1.0e+308, downloading: 1.0e+308}"))
    with pytest.raises(ValidationError) as info:
        store.advance("s", "e", "downloading")
    assert str(path) in info.value.one_line() and "costs" in info.value.message
    pending = store.get("s", "e").pending  # the committed version, and why the file is not it
    assert pending is not None and info.value.message in pending["error"]


SURROGATE = "bad\udcff"  # what Python makes of the byte 0xff in an argument or a file name

TEXT_CALLS: dict[str, tuple[str, Callable[[Store], Any]]] = {
    "create title": ("title", lambda s: s.create("s", "new", title=SURROGATE)),
    "create metadata key": ("metadata", lambda s: s.create("s", "new", metadata={SURROGATE: 1})),
    "create metadata value": ("metadata", lambda s: s.create("s", "new", metadata={"k": [SURROGATE]})),
    "create files": ("files", lambda s: s.create("s", "new", files={"audio": SURROGATE})),
    "create in a new show": ("title", lambda s: s.create("fresh", "new", title=SURROGATE)),
    "update title": ("title", lambda s: s.update("s", "e", title=SURROGATE)),
    "update message": ("message", lambda s: s.update("s", "e", message=SURROGATE)),
    "update metadata": ("metadata", lambda s: s.update("s", "e", metadata={"k": SURROGATE})),
    "advance message": ("message", lambda s: s.advance("s", "e", "downloading", message=SURROGATE)),
    "retry by": ("by", lambda s: s.retry_now("s", "e", by=SURROGATE)),
    "retry note": ("note", lambda s: s.retry_now("s", "e", note=SURROGATE)),
    "run owner": ("owner", lambda s: s.run("s", "e", "downloading", owner=SURROGATE)),
    "create_show title": ("title", lambda s: s.create_show("fresh", title=SURROGATE)),
    "checkpoint data": ("checkpoint data", lambda s: s.save_checkpoint("s", "e", "discovered", {"k": SURROGATE})),
    "asset label": ("label", lambda s: s.add_asset("s", "e", b"data", label=SURROGATE)),
}


@pytest.mark.parametrize("name", list(TEXT_CALLS))
def test_text_that_is_not_utf8_is_refused_naming_the_field(any_store: Store, name: str) -> None:
    any_store.create("s", "e")
    field, call = TEXT_CALLS[name]
    before = folders(any_store.root)
    error = expect(any_store, ValidationError, lambda: call(any_store))
    assert field in error.message and "UTF-8" in error.message
    assert folders(any_store.root) == before  # no empty episode or show folder left behind


def test_approval_text_that_is_not_utf8_is_refused(podcast: Store) -> None:
    podcast.create("s", "e")
    for kw in ({"by": SURROGATE}, {"by": "ann", "note": SURROGATE}):
        error = expect(podcast, ValidationError, lambda kw=kw: podcast.approve("s", "e", "audio", **kw))
        assert next(iter(k for k, v in kw.items() if v == SURROGATE)) in error.message


def test_run_text_that_is_not_utf8_is_refused_where_it_is_set(store: Store) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading") as run:
        expect(store, ValidationError, lambda: run.cost(1.0, note=SURROGATE))
        with pytest.raises(ValidationError, match="run.message"):
            run.message = SURROGATE
        run.message = "fine"
    assert store.get("s", "e").message == "fine"


def test_a_failure_whose_text_is_not_utf8_is_recorded_with_escapes(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(ValueError), store.run("s", "e", "downloading"):
        raise ValueError("cannot decode /in/" + SURROGATE)  # e.g. a file name from os.listdir
    ep = store.get("s", "e")
    assert ep.stage == "failed" and "\\udcff" in ep.error_history[-1].message and "\\udcff" in (ep.hold or "")


class FailingDisk(Disk):
    """Fails the one system call named ``step`` whose path ends with ``name``."""

    def __init__(self, step: str, name: str) -> None:
        self.step, self.name = step, name

    def open(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        if self.step == "open" and path.endswith(self.name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def replace(self, src: str, dst: str, **dir_fds: int | None) -> None:
        if self.step == "replace" and dst.endswith(self.name):
            raise OSError(errno.EIO, "Input/output error")
        super().replace(src, dst, **dir_fds)


@pytest.mark.parametrize(("step", "name"), [("open", "events.jsonl"), ("replace", "episode.yaml")])
@pytest.mark.parametrize("show", ["s", "fresh"])
def test_a_create_that_fails_leaves_no_folder_behind(tmp_path: Path, step: str, name: str, show: str) -> None:
    Store.init(tmp_path / "store").create("s", "e")
    store = Store.open(tmp_path / "store", disk=FailingDisk(step, name))
    before_files, before_folders = snapshot(store.root), folders(store.root)
    with pytest.raises(StorageError):
        store.create(show, "new")
    assert folders(store.root) == before_folders and snapshot(store.root) == before_files
    assert Store.open(tmp_path / "store").create(show, "new").version == 1  # nothing in the way of a retry


INT_OR_FLOAT = (int, float)


def true_in_place_of_a_number(annotation: Any) -> Any:
    """A value putting ``True`` where ``annotation`` wants a number (None if it wants none)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in INT_OR_FLOAT:
        return True
    if origin is Annotated:
        return true_in_place_of_a_number(args[0])
    if origin in (Union, UnionType):
        return next((v for v in map(true_in_place_of_a_number, args) if v is not None), None)
    if origin is dict:
        inner = true_in_place_of_a_number(args[1])
        return None if inner is None else {"x": inner}
    if origin in (list, tuple):
        inner = true_in_place_of_a_number(args[0])
        return None if inner is None else [inner]
    return None


FILE_MODELS = [Episode, Event, Show, StoreConfig, Approval, CheckpointRecord, ErrorRecord, AssetRecord, UploadRecord,
               Lease, CacheConfig, GCSConfig, Pipeline, RetryPolicy]
NUMBER_FIELDS = [(model, name) for model in FILE_MODELS for name, info in model.model_fields.items()
                 if true_in_place_of_a_number(info.annotation) is not None]


@pytest.mark.parametrize(("model", "name"), NUMBER_FIELDS, ids=[f"{m.__name__}.{n}" for m, n in NUMBER_FIELDS])
def test_booleans_are_not_numbers_anywhere_in_the_file_schema(model: type[BaseModel], name: str) -> None:
    info = model.model_fields[name]
    annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation  # type: ignore[valid-type]
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    value = true_in_place_of_a_number(info.annotation)
    with pytest.raises(PydanticValidationError):
        adapter.validate_python(value)
    assert adapter.validate_python(json.loads(json.dumps(value).replace("true", "1"))) is not None


def test_the_number_fields_are_all_found() -> None:
    found = {f"{m.__name__}.{n}" for m, n in NUMBER_FIELDS}
    assert {"Episode.version", "Episode.schema_version", "Episode.attempts", "Episode.costs", "Event.version",
            "Show.schema_version", "StoreConfig.backups", "CheckpointRecord.size", "ErrorRecord.attempt",
            "Pipeline.max_attempts", "RetryPolicy.max_attempts"} <= found


@pytest.mark.parametrize(("before", "after", "field"), [
    ("version: 1\n", "version: true\n", "version"),
    ("  discovered: 1\n", "  discovered: true\n", "attempts.discovered"),
])
def test_a_hand_edit_with_a_boolean_for_a_number_is_reported_by_sync(store: Store, before: str, after: str,
                                                                      field: str) -> None:
    store.create("s", "e")
    path = episode_file(store, "s", "e")
    text = path.read_text()
    assert text.count(before) == 1
    path.write_text(text.replace(before, after))
    report = store.sync()
    assert [p.episode for p in report.rejected] == ["s/e"]
    line = text[: text.index(before)].count("\n") + 1
    assert f"{path}:{line}: {field}:" in report.rejected[0].message
    assert store.list()[0].version == 1  # the index keeps the last good state


@pytest.mark.parametrize("edit", ["backups: true", "lock_timeout: true"])
def test_a_boolean_for_a_number_in_statekit_yaml_is_refused(store: Store, edit: str) -> None:
    config = Path(store.root, "statekit.yaml")
    key = edit.split(":")[0]
    config.write_text(re.sub(rf"(?m)^{key}: .*$", edit, config.read_text()))
    with pytest.raises(ValidationError, match=rf"statekit.yaml:\d+: {key}:"):
        Store.open(store.root)


def test_an_event_line_with_a_boolean_version_is_not_an_event(store: Store) -> None:
    store.create("s", "e")
    log = Path(store.root, "shows/s/episodes/e/events.jsonl")
    log.write_text(re.sub(r'"schema_version":\d', '"schema_version":true', log.read_text()))
    with pytest.raises(CorruptFileError):
        store.events("s", "e")


# --- issue 12: errors people see -----------------------------------------------------------


ERRORS: list[StatekitError] = [
    InvalidTransitionError("illegal move", src="a", dst="b", allowed=["c"], show_id="s", episode_id="e"),
    ValidationError("bad field", path="/x.yaml", line=3, field="f"),
    StorageError("could not write /x", path="/x", errno=errno.ENOSPC),
    LockTimeoutError("could not lock", path="/l", timeout=5.0),
    CorruptFileError("damaged", path="/x", line=2),
    VersionConflictError("conflict", expected=1, actual=2),
    NotReadyError("not ready", reason="due", hint="wait"),
    UnknownStageError("unknown stage", stages=["a", "b"]),
    SchemaVersionError("too new", path="/x", found=9, supported=3, hint="upgrade statekit"),
    InvalidIdError("bad id"),
]


@pytest.mark.parametrize("error", ERRORS, ids=[type(e).__name__ for e in ERRORS])
def test_every_error_shows_its_hint_in_str_tracebacks_and_logs_once(error: StatekitError,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    assert error.hint and error.hint in str(error)
    assert str(error) == error.one_line() and error.one_line().count("hint:") == 1
    try:
        raise error
    except StatekitError:
        shown = traceback.format_exc()
    assert shown.count(error.hint) == 1
    logging.getLogger("statekit.test").warning("failed: %s", error)
    assert error.hint in caplog.text


@pytest.mark.parametrize("error", ERRORS, ids=[type(e).__name__ for e in ERRORS])
def test_errors_survive_pickling_and_copying(error: StatekitError) -> None:
    for other in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(other) is type(error) and str(other) == str(error)
        assert {k: v for k, v in vars(other).items()} == {k: v for k, v in vars(error).items()}
        if isinstance(error, OSError):
            assert (other.errno, other.filename) == (error.errno, error.filename)  # type: ignore[attr-defined]


def test_validation_hints_fit_their_cause(store: Store) -> None:
    store.create("s", "e")
    hints = [expect(store, ValidationError, call).hint for call in (
        lambda: store.advance("s", "e", "downloading", cost=-5),
        lambda: store.advance("s", "e", "downloading", expected_version=-1),
        lambda: store.update("s", "e"),
        lambda: store.next("downloading", limit=0),
    )]
    assert "costs are non-negative finite amounts" in hints[0]
    assert not any("field named above" in h for h in hints)
    assert "fix f in that file" in ValidationError("x", path="/a.yaml", field="f").hint
