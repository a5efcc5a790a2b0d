from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import (
    ApprovalRequiredError,
    InvalidTransitionError,
    Pipeline,
    PipelineError,
    Store,
    UnknownStageError,
)
from statekit.pipeline import ARCHIVE, PODCAST, load_pipeline, problems

from .conftest import episode_file


def test_archive_preset_is_exactly_the_design_graph() -> None:
    assert ARCHIVE.initial == "discovered"
    assert ARCHIVE.terminal == ("published", "skipped")
    assert ARCHIVE.stages == {
        "discovered": ("downloading", "skipped"),
        "downloading": ("downloaded", "failed"),
        "downloaded": ("converting", "skipped"),
        "converting": ("converted", "failed"),
        "converted": ("uploading", "skipped"),
        "uploading": ("uploaded", "failed"),
        "uploaded": ("scheduled",),
        "scheduled": ("published",),
        "failed": ("downloading", "converting", "uploading", "skipped"),
        "published": (),
        "skipped": (),
    }
    assert ARCHIVE.max_attempts == {"downloading": 3, "converting": 2, "uploading": 3}


def test_podcast_preset_has_the_generation_stages_and_a_gate_before_audio() -> None:
    for stage in ("ideation", "outline", "segments", "scripts", "audio", "mix", "published", "failed"):
        assert stage in PODCAST.stages
    assert PODCAST.gates == ("audio",)
    assert "audio" in PODCAST.next_stages("scripts")
    assert set(PODCAST.next_stages("failed")) >= {"outline", "segments", "scripts", "audio", "mix"}
    assert problems(PODCAST) == []


def graph(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "mini", "initial": "a", "terminal": ["c"],
        "stages": {"a": ["b"], "b": ["c"], "c": []},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"stages": {"a": ["b", "zz"], "b": ["c"], "c": []}}, "unknown stage 'zz'"),
        ({"initial": "nope"}, "initial stage 'nope'"),
        ({"stages": {"a": ["c"], "b": ["c"], "c": []}}, "cannot be reached"),
        ({"terminal": ["c", "q"]}, "terminal stage 'q'"),
        ({"stages": {"a": ["b"], "b": [], "c": []}, "terminal": ["c"]}, "no next stages but is not listed"),
        ({"gates": ["q"]}, "gate stage 'q'"),
        ({"gates": ["a"]}, "initial stage 'a' cannot be a gate"),
        ({"max_attempts": {"q": 2}}, "max_attempts stage 'q'"),
        ({"stages": {"a": ["b"], "B!": ["c"], "b": ["c"], "c": []}}, "not a valid id"),
        ({"stages": {}}, "no stages"),
        ({"stages": {"a": ["b", "b"], "b": ["c"], "c": []}}, "lists a next stage twice"),
    ],
)
def test_a_wrong_graph_is_refused_naming_the_problem(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(PipelineError) as info:
        load_pipeline(graph(**changes))
    assert needle in str(info.value)
    assert any(needle in p for p in info.value.problems) or needle in str(info.value)


def test_a_graph_missing_a_field_is_refused() -> None:
    spec = graph()
    del spec["initial"]
    with pytest.raises(PipelineError, match="initial"):
        load_pipeline(spec)


def test_unknown_preset_names_the_presets() -> None:
    with pytest.raises(PipelineError) as info:
        load_pipeline("nope")
    assert "archive" in info.value.hint and "podcast" in info.value.hint


def test_store_init_refuses_a_wrong_graph_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="unknown stage"):
        Store.init(tmp_path / "s", pipeline=graph(stages={"a": ["x"], "b": [], "c": []}))
    assert not (tmp_path / "s").exists()


def test_store_open_refuses_a_graph_broken_by_hand(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    config = Path(store.root, "statekit.yaml")
    config.write_text(config.read_text().replace("downloaded: [converting, skipped]", "downloaded: [convertin]"))
    with pytest.raises(PipelineError, match="unknown stage 'convertin'"):
        Store.open(tmp_path / "s")


def test_pipeline_from_a_yaml_file(tmp_path: Path) -> None:
    spec = tmp_path / "pipe.yaml"
    spec.write_text("pipeline:\n  name: mini\n  initial: a\n  terminal: [c]\n"
                    "  stages:\n    a: [b]\n    b: [c]\n    c: []\n")
    store = Store.init(tmp_path / "s", pipeline=spec)
    assert Store.open(tmp_path / "s").pipeline == store.pipeline
    assert store.pipeline.name == "mini"
    ep = store.create("show", "ep1")
    assert ep.stage == "a"


def test_custom_pipeline_object(tmp_path: Path) -> None:
    p = Pipeline(name="tiny", initial="new", terminal=("done",), stages={"new": ("done",), "done": ()})
    store = Store.init(tmp_path / "s", pipeline=p)
    store.create("s1", "e1")
    assert store.advance("s1", "e1", "done").stage == "done"


# --- random walks through the presets never reach an illegal stage -------------


@pytest.mark.parametrize("preset", ["archive", "podcast"])
@settings(max_examples=25)
@given(choices=st.lists(st.tuples(st.integers(0, 50), st.booleans()), min_size=1, max_size=25))
def test_random_walk_only_takes_legal_moves(tmp_path_factory: pytest.TempPathFactory, preset: str,
                                            choices: list[tuple[int, bool]]) -> None:
    store = Store.init(tmp_path_factory.mktemp("walk") / "s", pipeline=preset)
    p = store.pipeline
    stages = list(p.stages)
    ep = store.create("show", "ep")
    path = episode_file(store, "show", "ep")
    for pick, approve_first in choices:
        target = stages[pick % len(stages)]
        if approve_first and target in p.gates:
            ep = store.approve("show", "ep", target, by="tester")
        legal = target in p.next_stages(ep.stage) and (target not in p.gates or target in ep.approvals)
        before = path.read_bytes()
        if legal:
            ep = store.advance("show", "ep", target)
            assert ep.stage == target
        else:
            with pytest.raises((InvalidTransitionError, ApprovalRequiredError)):
                store.advance("show", "ep", target)
            assert path.read_bytes() == before  # a refused move changes nothing
    moves = [(e.from_stage, e.to_stage) for e in store.events("show", "ep") if e.kind == "advance"]
    for src, dst in moves:
        assert dst in p.next_stages(src)
    assert store.get("show", "ep").stage in p.stages


def test_unknown_stage_is_its_own_error(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(UnknownStageError) as info:
        store.advance("s", "e", "teleported")
    assert "downloading" in info.value.hint


def test_illegal_move_lists_the_legal_next_stages(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(InvalidTransitionError) as info:
        store.advance("s", "e", "published")
    assert info.value.allowed == ["downloading", "skipped"]
    assert "downloading, skipped" in info.value.one_line()


def test_gate_needs_approval_and_approval_survives_a_retry(podcast: Store) -> None:
    s = podcast
    s.create("oliver", "ep001")
    for stage in ("outline", "segments", "scripts"):
        s.advance("oliver", "ep001", stage)
    with pytest.raises(ApprovalRequiredError):
        s.advance("oliver", "ep001", "audio")
    s.approve("oliver", "ep001", "audio", by="ana", note="scripts read")
    s.advance("oliver", "ep001", "audio")
    s.advance("oliver", "ep001", "failed", message="TTS quota")
    assert s.advance("oliver", "ep001", "audio").stage == "audio"  # retry keeps the approval
    s.advance("oliver", "ep001", "failed")
    s.advance("oliver", "ep001", "scripts")  # scripts redone: the approval no longer holds
    assert "audio" not in s.get("oliver", "ep001").approvals
    with pytest.raises(ApprovalRequiredError):
        s.advance("oliver", "ep001", "audio")


def test_approving_a_stage_without_a_gate_is_refused(podcast: Store) -> None:
    podcast.create("oliver", "ep001")
    from statekit import ValidationError

    with pytest.raises(ValidationError, match="no approval gate"):
        podcast.approve("oliver", "ep001", "outline", by="ana")
    with pytest.raises(ValidationError, match="name of the person"):
        podcast.approve("oliver", "ep001", "audio", by="  ")


# --- stage runs and failure handling in the graph -------------------------------------------

WORK = {"new": ["work", "skipped"], "work": ["done", "failed"], "done": [], "failed": ["work", "skipped"],
        "skipped": []}


def runs_graph(**changes: object) -> dict[str, object]:
    return {"name": "w", "initial": "new", "terminal": ["done", "skipped"], "stages": dict(WORK), **changes}


def test_runs_are_derived_from_the_failure_edges_unless_given() -> None:
    assert load_pipeline(runs_graph()).runs == {"work": "done"}
    assert load_pipeline(runs_graph(runs={})).runs == {}
    plain = load_pipeline(graph())  # no failed stage: no failure handling, no runs
    assert (plain.runs, plain.failure_stage, plain.give_up_stage) == ({}, None, None)
    assert PODCAST.runs["scripts"] == "audio" and PODCAST.runs["mix"] == "published"
    assert ARCHIVE.runs == {"downloading": "downloaded", "converting": "converted", "uploading": "uploaded"}
    assert load_pipeline(ARCHIVE.to_config()) == ARCHIVE  # what statekit.yaml holds reads back the same


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"runs": {"new": "work"}}, "run stage 'new' has no edge to the failure stage 'failed'"),
        ({"runs": {"work": "skipped"}}, "succeeds into 'skipped', which is not one of its next stages"),
        ({"runs": {"zz": None}}, "run stage 'zz' is not one of the stages"),
        ({"runs": {"failed": None}}, "the failure stage 'failed' cannot itself be run"),
        ({"failure_stage": "oops"}, "failure_stage 'oops' is not one of the stages"),
        ({"failure_stage": None, "runs": {"work": "done"}}, "runs need a failure_stage"),
        ({"stages": {**WORK, "failed": ["skipped"]}}, "has no edge back to run stage 'work'"),
        ({"stages": {**WORK, "failed": ["work", "new"]}, "terminal": ["done", "skipped"]},
         "has no edge to the give-up stage 'skipped'"),
        ({"retry": {"initial": -1}}, "retry.initial"),
        ({"retry": {"lease_seconds": 0}}, "retry.lease_seconds"),
        ({"error_rules": [{"kind": "nope", "types": ["X"]}]}, "error_rules"),
    ],
)
def test_wrong_run_settings_are_refused_naming_the_problem(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(PipelineError) as info:
        load_pipeline(runs_graph(**changes))
    assert needle in str(info.value)


def test_ready_for_a_run_stage_hold_and_done() -> None:
    from statekit.pipeline import ready_for

    assert ready_for(ARCHIVE, "downloading", "discovered", {}) == "downloading"  # waits to be run there
    assert ready_for(ARCHIVE, "failed", "converting", {}) == "converting"
    assert ready_for(ARCHIVE, "failed", "converting", {}, hold="fix the input") is None
    assert ready_for(PODCAST, "scripts", "segments", {}, done=True) is None  # the gate is not approved
    assert ready_for(PODCAST, "scripts", "segments", {"audio": object()}, done=True) == "audio"
    assert ready_for(ARCHIVE, "skipped", "failed", {}) is None
