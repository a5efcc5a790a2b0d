"""Leased stage runs and the failure policy, with an injected clock (no sleeps)."""

from __future__ import annotations

import errno
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from statekit import (
    APIError,
    ApprovalRequiredError,
    CorruptFileError,
    EpisodeNotFoundError,
    InvalidTransitionError,
    LeaseExpiredError,
    NotReadyError,
    Store,
    ValidationError,
    VersionConflictError,
)
from statekit.failures import plan_failure
from statekit.pipeline import ARCHIVE, PODCAST
from statekit.taxonomy import ErrorKind

from .conftest import snapshot


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def pipeline(base: Any = ARCHIVE, **retry: Any) -> dict[str, Any]:
    config = base.to_config()
    config["retry"] = {**config["retry"], "jitter": 0.0, **retry}
    return config


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Store:
    return Store.init(tmp_path / "store", pipeline=pipeline(), clock=clock)


def kinds(store: Store, show: str = "s", ep: str = "e") -> list[str]:
    return [e.kind for e in store.events(show, ep)]


def keys(episodes: list) -> list[str]:
    return [e.key for e in episodes]


def fail_with(store: Store, exc: BaseException, stage: str = "downloading", **kw: Any) -> Any:
    with pytest.raises(type(exc)), store.run("s", "e", stage, **kw) as run:
        raise exc
    return run


# --- success --------------------------------------------------------------------------


def test_a_run_leases_the_episode_and_moves_it_to_the_success_target(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    assert keys(store.next("downloading")) == ["s/e"]
    with store.run("s", "e", "downloading", owner="worker-1") as run:
        ep = store.get("s", "e")
        assert ep.stage == "downloading" and ep.attempts["downloading"] == 1
        assert ep.lease is not None and ep.lease.owner == "worker-1" and ep.lease.run_id == run.run_id
        # renewed in the background, so the default lease is short: the pipeline's 600 s, at most 20 s
        assert ep.lease.expires_at == clock.now + timedelta(seconds=20)
        assert store.next("downloading") == []  # leased: never handed out
        clock.tick(12)
        run.message = "fetched 3 files"
    ep = store.get("s", "e")
    assert ep.stage == "downloaded" and ep.lease is None and ep.previous_stage == "downloading"
    assert ep.message == "fetched 3 files" and run.outcome == "succeeded"
    assert kinds(store) == ["create", "start", "finish"]
    finish = store.events("s", "e")[-1]
    assert (finish.from_stage, finish.to_stage, finish.model_extra["seconds"]) == ("downloading", "downloaded", 12.0)
    assert keys(store.next("converting")) == ["s/e"] and store.next("downloading") == []


def test_a_run_without_background_renewal_keeps_the_pipelines_lease(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading", renew=False) as run:
        assert run.episode is not None and run.episode.lease is not None
        assert run.episode.lease.expires_at == clock.now + timedelta(seconds=600)
        assert run._renewer is None  # noqa: SLF001


def test_checkpoints_and_costs_through_the_run_are_durable_and_renew_the_lease(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading", lease_seconds=100) as run:
        assert run.resume is None
        clock.tick(90)
        run.checkpoint({"parts": [1, 2]}, cost=0.5)
        assert store.load_checkpoint("s", "e", "downloading") == {"parts": [1, 2]}
        assert store.get("s", "e").costs == {"downloading": 0.5}
        clock.tick(90)  # 180 s since the start: alive only because the checkpoint renewed the lease
        run.cost(0.25, note="second call")
        clock.tick(90)
        run.heartbeat()
        clock.tick(90)
        assert run.time_left == 10.0
    ep = store.get("s", "e")
    assert ep.stage == "downloaded" and ep.costs == {"downloading": 0.75} and ep.cost_total == 0.75
    assert kinds(store) == ["create", "start", "checkpoint", "cost", "heartbeat", "finish"]
    assert store.costs() == {"downloading": 0.75}
    events = store.events("s", "e")
    assert events[2].cost == 0.5 and events[3].message == "second call"
    assert {e.model_extra.get("run_id") for e in events[1:]} == {run.run_id}


def test_a_run_starts_in_place_where_the_episode_waits_for_it(tmp_path: Path, clock: Clock) -> None:
    podcast = Store.init(tmp_path / "p", pipeline=pipeline(PODCAST), clock=clock)
    podcast.create("o", "e")  # ideation: the first step waits to be done
    assert keys(podcast.next("ideation")) == ["o/e"]
    with podcast.run("o", "e", "ideation"):
        pass
    ep = podcast.get("o", "e")
    assert ep.stage == "outline" and ep.attempts == {"ideation": 1, "outline": 1}  # starting in place counts none
    for stage in ("outline", "segments"):
        with podcast.run("o", "e", stage):
            pass
    with podcast.run("o", "e", "scripts"):
        pass
    ep = podcast.get("o", "e")
    assert ep.stage == "scripts" and ep.stage_done  # audio is gated: done, waiting for a person
    with pytest.raises(NotReadyError) as done:
        podcast.run("o", "e", "scripts").__enter__()
    assert done.value.reason == "done"
    with pytest.raises(ApprovalRequiredError):
        podcast.run("o", "e", "audio").__enter__()
    podcast.approve("o", "e", "audio", by="ana")
    assert keys(podcast.next("audio")) == ["o/e"]
    with podcast.run("o", "e", "audio") as run:
        run.checkpoint({"tts": "ok"}, cost=1.2)
    with podcast.run("o", "e", "mix"):
        pass
    ep = podcast.get("o", "e")
    assert ep.stage == "published" and ep.costs == {"audio": 1.2}
    assert podcast.counts()["published"] == 1


# --- what cannot start -------------------------------------------------------------------


def test_a_live_lease_keeps_other_workers_out(store: Store) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading", owner="a"):
        before = snapshot(store.root)
        with pytest.raises(NotReadyError, match="being run .* by a until") as info:
            store.run("s", "e", "downloading", owner="b").__enter__()
        assert info.value.reason == "leased" and info.value.episode_id == "e"
        assert snapshot(store.root) == before


def test_a_run_of_a_stage_the_episode_went_past_is_not_ready_not_illegal(store: Store) -> None:
    for ep in ("ran", "moved", "young"):
        store.create("s", ep)
    stale = store.next("downloading")  # what a worker saw; then another worker, and a person, acted
    assert [e.episode_id for e in stale] == ["moved", "ran", "young"]
    with store.run("s", "ran", "downloading", owner="other"):
        pass
    store.advance("s", "moved", "skipped", message="not worth it")
    before = snapshot(store.root)
    for ep, now_at in (("ran", "downloaded"), ("moved", "skipped")):
        with pytest.raises(NotReadyError, match=f"at stage '{now_at}' now, past 'downloading'") as info:
            store.run("s", ep, "downloading", owner="late").__enter__()
        assert info.value.reason == "moved_on" and info.value.current_stage == now_at
        assert info.value.context["current_stage"] == now_at and info.value.episode_id == ep
    # a stage the episode has not reached was never a right request: still an illegal move
    with pytest.raises(InvalidTransitionError, match="illegal move 'discovered' -> 'uploading'"):
        store.run("s", "young", "uploading").__enter__()
    assert snapshot(store.root) == before


def test_bad_run_requests_are_refused_and_change_nothing(store: Store) -> None:
    store.create("s", "e")
    before = snapshot(store.root)
    with pytest.raises(ValidationError, match="not run by workers"):
        store.run("s", "e", "discovered")
    with pytest.raises(InvalidTransitionError, match="illegal move 'discovered' -> 'converting'") as info:
        store.run("s", "e", "converting").__enter__()
    assert "legal next stages from 'discovered': downloading, skipped" in info.value.hint
    with pytest.raises(EpisodeNotFoundError):
        store.run("s", "nope", "downloading").__enter__()
    for bad in ({"owner": ""}, {"owner": 5}, {"owner": "x" * 201}, {"lease_seconds": 0},
                {"lease_seconds": float("nan")}, {"lease_seconds": True}, {"lease_seconds": "60"}):
        with pytest.raises(ValidationError):
            store.run("s", "e", "downloading", **bad)
    assert snapshot(store.root) == before


# --- leases that run out ---------------------------------------------------------------


def test_a_worker_whose_lease_expired_cannot_write(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    run = store.run("s", "e", "downloading", lease_seconds=60)
    run.__enter__()
    clock.tick(61)
    before = snapshot(store.root)
    with pytest.raises(LeaseExpiredError, match="expired"):
        run.checkpoint({"late": True})
    with pytest.raises(VersionConflictError):  # LeaseExpiredError is a VersionConflictError
        run.heartbeat()
    with pytest.raises(LeaseExpiredError):
        run.__exit__(None, None, None)
    assert snapshot(store.root) == before
    assert keys(store.next("downloading")) == ["s/e"]  # ready again the moment the lease ran out


def test_a_second_worker_takes_over_and_the_stale_one_is_rejected(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    stale = store.run("s", "e", "downloading", owner="a", lease_seconds=60)
    stale.__enter__()
    stale.checkpoint({"done_parts": 2})
    clock.tick(61)
    with store.run("s", "e", "downloading", owner="b") as fresh:
        assert fresh.resume == {"done_parts": 2}  # nothing the first worker saved is lost
        with pytest.raises(LeaseExpiredError, match="now held by b"):
            stale.cost(9.99)
        with pytest.raises(LeaseExpiredError):  # its failure cannot be recorded either
            stale.__exit__(RuntimeError, RuntimeError("late"), None)
    ep = store.get("s", "e")
    assert ep.stage == "downloaded" and ep.costs == {}
    assert kinds(store) == ["create", "start", "checkpoint", "recovered", "start", "finish"]
    assert ep.attempts == {"discovered": 1, "downloading": 2, "failed": 1, "downloaded": 1}
    assert ep.error_history[-1].kind == "interrupted" and "lease of a" in ep.error_history[-1].message


# --- failures -----------------------------------------------------------------------------


def test_a_transient_failure_is_retried_after_an_exponential_backoff(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    waits = []
    for attempt in (1, 2):
        run = fail_with(store, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
        assert run.outcome == "failed" and run.kind is ErrorKind.TRANSIENT_NETWORK
        ep = store.get("s", "e")
        assert ep.stage == "failed" and ep.previous_stage == "downloading" and ep.lease is None
        assert ep.attempts["downloading"] == attempt
        record = ep.error_history[-1]
        assert (record.stage, record.kind, record.action, record.attempt) == (
            "downloading", "transient_network", "retry", attempt)
        assert "ConnectionResetError" in (record.traceback or "") and record.type == "ConnectionResetError"
        assert ep.due_at is not None
        waits.append((ep.due_at - clock.now).total_seconds())
        assert store.next("downloading") == []  # not before it is due
        with pytest.raises(NotReadyError, match="not due until") as info:
            store.run("s", "e", "downloading").__enter__()
        assert info.value.reason == "due"
        clock.tick(waits[-1])
        assert keys(store.next("downloading")) == ["s/e"]
    assert waits == [30.0, 60.0]  # initial 30 s, doubling (jitter 0 here)
    # the third attempt is the last one downloading has (max_attempts 3): skipped, with the reason
    fail_with(store, TimeoutError("read timed out"))
    ep = store.get("s", "e")
    assert ep.stage == "skipped" and ep.hold is None and ep.due_at is None
    assert "3 of 3 attempts used" in (ep.message or "") and "read timed out" in (ep.message or "")
    assert ep.error_history[-1].action == "give_up"
    assert kinds(store)[-3:] == ["start", "fail", "give_up"]
    assert store.next("downloading") == []


def test_backoff_has_jitter_and_a_maximum(tmp_path: Path, clock: Clock) -> None:
    config = pipeline(initial=10.0, maximum=25.0, jitter=5.0)
    config["max_attempts"]["downloading"] = 10
    store = Store.init(tmp_path / "j", pipeline=config, clock=clock)
    store.create("s", "e")
    waits = []
    for _ in range(4):
        fail_with(store, OSError(errno.EAGAIN, "busy"), stage="downloading")
        ep = store.get("s", "e")
        waits.append((ep.due_at - clock.now).total_seconds())
        clock.tick(waits[-1])
    assert 10 <= waits[0] <= 15 and 20 <= waits[1] <= 25  # 10 s, then 20 s, plus up to 5 s of jitter
    assert 25 <= waits[2] <= 30 and 25 <= waits[3] <= 30  # 40 s and 80 s capped at 25 s, plus the jitter
    assert len(set(waits)) == 4


def test_a_service_that_says_when_to_come_back_is_believed(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    fail_with(store, APIError("slow down", status=429, retry_after=300))
    ep = store.get("s", "e")
    assert ep.error_history[-1].kind == "transient_resource"
    assert ep.due_at == clock.now + timedelta(seconds=300)


def test_bad_input_is_held_for_a_person(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    fail_with(store, FileNotFoundError(errno.ENOENT, "No such file or directory", "/in/a.wav"))
    ep = store.get("s", "e")
    assert ep.stage == "failed" and ep.hold is not None and "statekit retry s/e" in ep.hold
    assert ep.error_history[-1].action == "hold"
    clock.tick(10_000)
    assert store.next("downloading") == []  # never, until someone acts
    with pytest.raises(NotReadyError, match="held for a person"):
        store.run("s", "e", "downloading").__enter__()
    store.retry_now("s", "e", by="ana", note="file restored")
    assert keys(store.next("downloading")) == ["s/e"]
    retry = store.events("s", "e")[-1]
    assert retry.kind == "retry" and retry.message == "file restored" and retry.model_extra["by"] == "ana"
    with store.run("s", "e", "downloading"):
        pass
    assert store.get("s", "e").stage == "downloaded"


def test_a_permanent_failure_is_skipped_at_once(store: Store) -> None:
    store.create("s", "e")
    fail_with(store, CorruptFileError("source.wav: truncated", path="source.wav"))
    ep = store.get("s", "e")
    assert ep.stage == "skipped" and ep.attempts["downloading"] == 1
    assert "permanent failure" in (ep.message or "")


def test_retry_now_skips_the_rest_of_a_backoff(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    fail_with(store, TimeoutError("slow"))
    assert store.next("downloading") == []
    store.retry_now("s", "e")
    assert keys(store.next("downloading")) == ["s/e"]
    before = snapshot(store.root)
    with pytest.raises(ValidationError, match="not waiting"):
        store.retry_now("s", "e")
    with pytest.raises(ValidationError):
        store.retry_now("s", "e", by=" ")
    assert snapshot(store.root) == before


def test_pipeline_rules_decide_the_kind(tmp_path: Path, clock: Clock) -> None:
    config = pipeline()
    config["error_rules"] = [{"kind": "user_input_invalid", "types": ["RuntimeError"], "message": "quota"}]
    store = Store.init(tmp_path / "r", pipeline=config, clock=clock)
    assert Store.open(tmp_path / "r").pipeline.error_rules[0].message == "quota"  # kept in statekit.yaml
    store.create("s", "e")
    fail_with(store, RuntimeError("monthly quota used up"))
    assert store.get("s", "e").hold is not None
    store.create("s", "f")
    with pytest.raises(RuntimeError), store.run("s", "f", "downloading"):
        raise RuntimeError("something else")
    assert store.get("s", "f").error_history[-1].kind == "unknown"  # retried: attempts bound it


def test_reraise_false_records_and_swallows(store: Store) -> None:
    store.create("s", "e")
    with store.run("s", "e", "downloading", reraise=False) as run:
        raise APIError("bad gateway", status=502)
    assert run.outcome == "failed" and isinstance(run.error, APIError) and run.kind is ErrorKind.TRANSIENT_NETWORK


def test_an_interrupt_is_recorded_and_always_raised(store: Store) -> None:
    store.create("s", "e")
    with pytest.raises(KeyboardInterrupt), store.run("s", "e", "downloading", reraise=False):
        raise KeyboardInterrupt
    ep = store.get("s", "e")
    assert ep.stage == "failed" and ep.error_history[-1].kind == "interrupted"
    assert ep.due_at is not None and keys(store.next("downloading")) == ["s/e"]  # due at once


def test_failures_are_logged_with_context_and_kept_in_errors_jsonl(store: Store,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    store.create("s", "e")
    with caplog.at_level(logging.WARNING, logger="statekit"):
        fail_with(store, APIError("upstream 503", status=503, service="tts"), owner="w7")
    (record,) = [r for r in caplog.records if getattr(r, "kind", None)]
    assert (record.show_id, record.episode_id, record.stage, record.kind, record.action) == (
        "s", "e", "downloading", "transient_network", "retry")
    assert record.service == "tts" and record.owner == "w7" and record.levelno == logging.WARNING
    (line,) = store.error_log()
    assert line["show_id"] == "s" and line["kind"] == "transient_network" and line["owner"] == "w7"
    assert line["message"] == "upstream 503" and line["due_at"] and "traceback" not in line
    assert Path(store.root, ".statekit", "errors.jsonl").read_text().count("\n") == 1


# --- recovery --------------------------------------------------------------------------------


def test_recover_brings_back_episodes_whose_worker_died(store: Store, clock: Clock) -> None:
    for ep in ("a", "b"):
        store.create("s", ep)
    dead = store.run("s", "a", "downloading", owner="dead-worker", lease_seconds=60)
    dead.__enter__()  # and never leaves: the process died
    dead.checkpoint({"bytes": 1000})
    alive = store.run("s", "b", "downloading", lease_seconds=600)
    alive.__enter__()
    assert store.recover().recovered == []  # nothing has expired yet
    clock.tick(61)
    report = store.recover()
    assert [(r["episode"], r["action"], r["owner"]) for r in report.recovered] == [
        ("s/a", "retry", "dead-worker")]
    ep = store.get("s", "a")
    assert ep.stage == "failed" and ep.due_at == clock.now and ep.error_history[-1].kind == "interrupted"
    assert kinds(store, "s", "a")[-1] == "recovered"
    assert store.recover().recovered == []  # done once
    assert keys(store.next("downloading")) == ["s/a"]
    with store.run("s", "a", "downloading") as run:
        assert run.resume == {"bytes": 1000}
    assert store.get("s", "a").stage == "downloaded"
    assert store.error_log()[-1]["kind"] == "interrupted"


def test_a_crash_loop_ends_in_skipped(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    for _ in range(3):  # downloading allows 3 attempts
        store.run("s", "e", "downloading", lease_seconds=10).__enter__()
        clock.tick(11)
        store.recover()
    ep = store.get("s", "e")
    assert ep.stage == "skipped" and ep.attempts["downloading"] == 3
    assert kinds(store)[-2:] == ["recovered", "give_up"]


def test_recover_completes_a_give_up_a_stopped_process_left_half_done(store: Store, clock: Clock) -> None:
    store.create("s", "e")
    store.run("s", "e", "downloading").__enter__()

    def first_half_only(m: Any, now: datetime) -> Any:
        new, event, _ = plan_failure(store.pipeline, m, "downloading", CorruptFileError("bad", path="x"), now)
        return new, event

    store.writer.write("s", "e", first_half_only)  # the process stopped before the second write
    ep = store.get("s", "e")
    assert ep.stage == "failed" and ep.hold is not None and ep.hold.startswith("giving up")
    assert store.next("downloading") == []  # never retried meanwhile
    report = store.recover()
    assert report.gave_up == ["s/e"] and store.get("s", "e").stage == "skipped"


def test_a_worker_starting_an_episode_whose_last_worker_died_on_its_last_attempt_is_told_it_gave_up(
        store: Store, clock: Clock) -> None:
    store.create("s", "e")
    for _ in range(3):  # three workers die in turn (downloading allows 3 attempts)
        store.run("s", "e", "downloading", lease_seconds=60).__enter__()
        clock.tick(61)
    with pytest.raises(NotReadyError, match="given up") as caught:
        store.run("s", "e", "downloading").__enter__()
    assert caught.value.reason == "gave_up"
    assert store.get("s", "e").stage == "skipped"
    # its hint sends a person to see why, not to 'statekit retry', which has nothing to release
    assert "statekit show s/e" in caught.value.hint and "statekit retry" not in caught.value.hint
    with pytest.raises(ValidationError, match="not waiting for a retry"):
        store.retry_now("s", "e")


# --- issue 12: what a failure's message says fits what statekit did --------------------------


def fail_messages(store: Store) -> list[str]:
    return [e.message or "" for e in store.events("s", "e") if e.kind == "fail"]


def test_failure_messages_say_what_was_done(tmp_path: Path, clock: Clock) -> None:
    config = pipeline()
    config["max_attempts"]["downloading"] = 2
    store = Store.init(tmp_path / "m", pipeline=config, clock=clock)
    store.create("s", "e")
    fail_with(store, ConnectionResetError(errno.ECONNRESET, "reset"))  # attempt 1 of 2: retried
    clock.tick(3600)
    fail_with(store, ConnectionResetError(errno.ECONNRESET, "reset"))  # attempt 2 of 2: given up
    retried, gave_up = fail_messages(store)
    assert "retry automatically after a backoff" in retried and "gave up" not in retried
    assert "gave up on it (2 of 2 attempts used): the episode goes to 'skipped'" in gave_up
    assert "retry" not in gave_up.replace("'statekit retry", "")
    ep = store.get("s", "e")
    assert ep.stage == "skipped" and "retry" not in (ep.message or "")
    assert [line["action"] for line in store.error_log()] == ["retry", "give_up"]


def test_held_and_permanent_failures_say_so(store: Store) -> None:
    store.create("s", "e")
    fail_with(store, ValueError("bad sample rate"))
    held = store.get("s", "e")
    assert "holds the episode until a person runs 'statekit retry s/e'" in (held.hold or "")
    assert "after a backoff" not in fail_messages(store)[-1]
    store.retry_now("s", "e")
    fail_with(store, CorruptFileError("input.wav is damaged", path="input.wav"))
    message = fail_messages(store)[-1]
    assert "gave up on it (a permanent failure)" in message and "after a backoff" not in message


def test_an_interrupted_run_is_retried_at_once_and_says_so() -> None:
    from statekit.models import Episode

    now = datetime(2026, 11, 21, tzinfo=timezone.utc)
    m = Episode(show_id="s", episode_id="e", stage="downloading", version=2, created_at=now, updated_at=now,
                stage_entered_at=now, attempts={"discovered": 1, "downloading": 1})
    _, event, _ = plan_failure(ARCHIVE, m, "downloading", RuntimeError("gone"), now, kind=ErrorKind.INTERRUPTED)
    assert event["due_at"] == now.isoformat() and "statekit will retry automatically." in event["message"]
    assert "after a backoff" not in event["message"]


def test_recover_refuses_an_illegal_move_a_hand_edit_left_and_writes_nothing(tmp_path: Path, clock: Clock) -> None:
    """A store before the ledger reads the file as it is: a dead worker's episode hand-edited
    to a stage the failure stage cannot be reached from is reported, not moved illegally."""
    store = Store.init(tmp_path / "old", pipeline=pipeline(), clock=clock, ledger=False)
    store.create("s", "e")
    store.run("s", "e", "downloading", owner="dead-worker", lease_seconds=60).__enter__()  # the process died
    path = Path(store.root, "shows", "s", "episodes", "e", "episode.yaml")
    path.write_text(path.read_text().replace("stage: downloading", "stage: discovered"))
    assert [p.kind for p in store.sync().rejected] == ["illegal-move"]  # the file is left as it is
    clock.tick(61)
    before = snapshot(store.root)
    report = store.recover()
    assert report.recovered == [] and len(report.problems) == 1
    assert report.problems[0].startswith("s/e: ") and "'discovered'" in report.problems[0]
    assert "nothing was written" in report.problems[0]
    assert snapshot(store.root) == before
    assert "move" not in [p.kind for p in store.verify().problems]
    path.write_text(path.read_text().replace("stage: discovered", "stage: downloading"))  # put back
    report = store.recover()
    assert [(r["episode"], r["action"]) for r in report.recovered] == [("s/e", "retry")]
    assert store.get("s", "e").stage == "failed" and store.verify().clean


def test_a_run_on_the_workers_thread_opens_no_connection_to_the_index(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's lease calls (claim, take, the fence's look, release) use the thread's kept
    connection: opening an SQLite connection (its schema parsed) cost about 0.3 ms each, four
    times a run. The renewer, on a thread of its own, still opens its own."""
    import sqlite3.dbapi2
    import traceback

    store = Store.init(tmp_path / "s")
    for i in range(6):
        store.create("s", f"e{i}")
    with store.run("s", "e0", "downloading"):
        pass
    opened: list[str] = []  # where each connection was opened
    connect = sqlite3.dbapi2.connect

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append("".join(traceback.format_stack(limit=12)))
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3.dbapi2, "connect", counted)
    for i in range(1, 4):
        with store.run("s", f"e{i}", "downloading") as run:
            run.checkpoint({"done": i})
    claimed = store.claim("downloading")
    assert claimed is not None
    with claimed:
        pass
    assert opened == [], "\n\n".join(opened)
    assert [e.stage for e in store.list()] == ["downloaded"] * 5 + ["discovered"]
    assert store.index.leases.count() == 0
