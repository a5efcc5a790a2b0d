"""Errors people can act on: classification, messages, context, in-process retries.

Backoff is checked through an injected sleep, never by sleeping.
"""

from __future__ import annotations

import errno
import logging
import random
import socket

import pytest

import statekit
from statekit.errors import (
    APIError,
    AudioProcessingError,
    CorruptFileError,
    EpisodeNotFoundError,
    LeaseExpiredError,
    LockTimeoutError,
    NetworkError,
    StatekitError,
    StorageError,
    ValidationError,
    VersionConflictError,
    context_of,
)
from statekit.taxonomy import (
    DEFAULT_RULES,
    MESSAGES,
    SITUATIONS,
    ErrorKind,
    Rule,
    backoff_seconds,
    classify,
    explain,
    log_fields,
    retry,
)

K = ErrorKind


class HTTPResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class ThirdPartyHTTPError(Exception):
    """Shaped like requests.HTTPError: the status lives on .response."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = HTTPResponse(status)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), K.TRANSIENT_NETWORK),
        (OSError(errno.ETIMEDOUT, "timed out"), K.TRANSIENT_NETWORK),
        (TimeoutError(), K.TRANSIENT_NETWORK),
        (socket.gaierror(-2, "Name or service not known"), K.TRANSIENT_NETWORK),
        (NetworkError("lost"), K.TRANSIENT_NETWORK),
        (APIError("server error", status=503), K.TRANSIENT_NETWORK),
        (APIError("no status"), K.TRANSIENT_NETWORK),
        (APIError("slow down", status=429), K.TRANSIENT_RESOURCE),
        (APIError("bad request", status=400), K.USER_INPUT_INVALID),
        (ThirdPartyHTTPError(502), K.TRANSIENT_NETWORK),
        (ThirdPartyHTTPError(404), K.USER_INPUT_INVALID),
        (OSError(errno.EAGAIN, "try again"), K.TRANSIENT_RESOURCE),
        (LockTimeoutError("busy", path="/x", timeout=1), K.TRANSIENT_RESOURCE),
        (OSError(errno.ENOSPC, "No space left on device"), K.SYSTEM_RESOURCE_EXCEEDED),
        (OSError(errno.EMFILE, "Too many open files"), K.SYSTEM_RESOURCE_EXCEEDED),
        (MemoryError(), K.SYSTEM_RESOURCE_EXCEEDED),
        (OSError(errno.EIO, "Input/output error"), K.HARDWARE_FAILURE),
        (OSError(errno.EROFS, "Read-only file system"), K.HARDWARE_FAILURE),
        (StorageError("could not write", path="/x", errno=errno.EIO), K.HARDWARE_FAILURE),
        (StorageError("could not write", path="/x", errno=errno.ENOSPC), K.SYSTEM_RESOURCE_EXCEEDED),
        (FileNotFoundError(errno.ENOENT, "No such file"), K.USER_INPUT_INVALID),
        (PermissionError(errno.EACCES, "denied"), K.USER_INPUT_INVALID),
        (ValueError("bad value"), K.USER_INPUT_INVALID),
        (ValidationError("field x"), K.USER_INPUT_INVALID),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), K.PERMANENT_FILE_CORRUPTION),
        (CorruptFileError("damaged", path="/x"), K.PERMANENT_FILE_CORRUPTION),
        (AudioProcessingError("cannot decode"), K.PERMANENT_FILE_CORRUPTION),
        (RuntimeError("something odd"), K.UNKNOWN),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_default_rules_classify(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


def test_policies_follow_the_document() -> None:
    # retry_with_backoff / wait_and_retry / cleanup_and_retry; a person for bad
    # input and hardware; skip_and_report for corruption.
    assert {k for k in K if k.policy == "retry"} == {
        K.TRANSIENT_NETWORK, K.TRANSIENT_RESOURCE, K.SYSTEM_RESOURCE_EXCEEDED, K.INTERRUPTED, K.UNKNOWN}
    assert K.USER_INPUT_INVALID.policy == K.HARDWARE_FAILURE.policy == "person"
    assert K.PERMANENT_FILE_CORRUPTION.policy == "give_up"
    assert K.TRANSIENT_NETWORK.family == "transient" and K.HARDWARE_FAILURE.family == "system"
    assert K.PERMANENT_FILE_CORRUPTION.family == "permanent" and K.USER_INPUT_INVALID.family == "user"
    assert K.TRANSIENT_RESOURCE.transient and not K.USER_INPUT_INVALID.transient


def test_a_wrapped_error_is_classified_by_its_cause() -> None:
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        except OSError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert classify(outer) is K.TRANSIENT_NETWORK
    # an implicit chain (raised while handling) counts too
    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise RuntimeError("cleanup failed") from None
    except RuntimeError as outer:
        assert outer.__suppress_context__
        assert classify(outer) is K.SYSTEM_RESOURCE_EXCEEDED


def test_pipeline_rules_come_first_and_match_every_given_field() -> None:
    class QuotaExceeded(Exception):
        pass

    quota = QuotaExceeded("monthly quota used up")
    assert classify(quota) is K.UNKNOWN
    rules = [Rule(kind=K.USER_INPUT_INVALID, types=("QuotaExceeded",))]
    assert classify(quota, rules) is K.USER_INPUT_INVALID
    qualified = Rule(kind=K.HARDWARE_FAILURE, types=(f"{__name__}.{QuotaExceeded.__qualname__}",))
    assert classify(quota, [qualified]) is K.HARDWARE_FAILURE
    # a rule overrides the default table for the same exception
    gpu = Rule(kind=K.TRANSIENT_RESOURCE, types=("RuntimeError",), message=r"CUDA out of memory")
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate"), [gpu]) is K.TRANSIENT_RESOURCE
    assert classify(RuntimeError("other"), [gpu]) is K.UNKNOWN  # both fields must match
    by_errno = Rule(kind=K.TRANSIENT_RESOURCE, errnos=("ENOSPC",))
    assert classify(OSError(errno.ENOSPC, "full"), [by_errno]) is K.TRANSIENT_RESOURCE
    assert classify(ValueError("x"), [by_errno]) is K.USER_INPUT_INVALID  # no errno: no match
    assert not Rule(kind=K.UNKNOWN).matches(RuntimeError())  # an empty rule matches nothing


def test_rules_are_data_and_bad_rules_are_refused() -> None:
    rule = Rule.model_validate({"kind": "transient_network", "types": ["ssl.SSLError"], "status": ["503", "5xx"]})
    assert rule.kind is K.TRANSIENT_NETWORK
    for bad in ({"kind": "nope", "types": ["X"]}, {"kind": "unknown", "errnos": ["ENOTANERRNO"]},
                {"kind": "unknown", "message": "("}, {"kind": "unknown", "status": ["600"]},
                {"kind": "unknown", "typo": ["X"]}):
        with pytest.raises(ValueError):
            Rule.model_validate(bad)
    assert all(r.types or r.errnos or r.status for r in DEFAULT_RULES)


def test_every_kind_has_a_message_with_an_action() -> None:
    assert set(MESSAGES) == set(K)
    for kind, template in MESSAGES.items():
        assert template.title and template.action
        line = explain(ValueError("the detail"), kind)
        assert "\n" not in line and "the detail" in line and template.action in line
    assert SITUATIONS["file_not_found"].message.format(filename="a.wav").count("a.wav") == 1
    assert "30 seconds" in SITUATIONS["network_interrupted"].message.format(retry_seconds=30)
    assert set(SITUATIONS) == {"file_not_found", "insufficient_memory", "network_interrupted"}


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert [backoff_seconds(n, 1.0, 60.0, 0.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_seconds(0, 2.0, 60.0, 0.0) == 2.0  # attempt numbers start at 1
    random.seed(7)
    samples = [backoff_seconds(3, 1.0, 60.0, 5.0) for _ in range(500)]
    assert all(4.0 <= s <= 9.0 for s in samples)
    assert max(samples) - min(samples) > 3  # the jitter really spreads retries


def test_retry_retries_transient_failures_with_backoff() -> None:
    waits: list[float] = []
    calls = []

    @retry(attempts=4, initial=1.0, maximum=3.0, jitter=0.0, sleep=waits.append)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return "ok"

    assert flaky() == "ok"
    assert waits == [1.0, 2.0, 3.0]
    assert flaky.__name__ == "flaky"


def test_retry_gives_up_after_the_attempts_and_reraises_the_last_error() -> None:
    waits: list[float] = []
    calls = []

    @retry(attempts=3, initial=0.5, jitter=0.0, sleep=waits.append)
    def down() -> None:
        calls.append(1)
        raise APIError(f"503 number {len(calls)}", status=503)

    with pytest.raises(APIError, match="503 number 3"):
        down()
    assert len(calls) == 3 and waits == [0.5, 1.0]


@pytest.mark.parametrize("exc", [ValueError("bad"), CorruptFileError("x", path="p"), OSError(errno.EIO, "io"),
                                 APIError("no", status=401)])
def test_retry_never_retries_what_is_not_transient(exc: BaseException) -> None:
    waits: list[float] = []
    calls = []

    @retry(attempts=5, sleep=waits.append)
    def broken() -> None:
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        broken()
    assert calls == [1] and waits == []


def test_retry_honours_pipeline_rules() -> None:
    waits: list[float] = []
    calls = []
    rules = [Rule(kind=K.TRANSIENT_RESOURCE, types=("ValueError",), message="warming up")]

    @retry(attempts=2, jitter=0.0, rules=rules, sleep=waits.append)
    def model_server() -> None:
        calls.append(1)
        raise ValueError("model warming up")

    with pytest.raises(ValueError):
        model_server()
    assert len(calls) == 2


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"attempts": 1.5}, {"initial": -1}, {"jitter": float("nan")}])
def test_retry_refuses_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        retry(**kwargs)


def test_retry_logs_each_retry_with_context_fields(caplog: pytest.LogCaptureFixture) -> None:
    @retry(attempts=2, jitter=0.0, initial=0.25, sleep=lambda s: None)
    def fetch() -> None:
        raise APIError("gateway timeout", status=504, show_id="oliver", episode_id="ep001", stage="audio")

    with caplog.at_level(logging.WARNING, logger="statekit"), pytest.raises(APIError):
        fetch()
    (record,) = caplog.records
    assert record.show_id == "oliver" and record.episode_id == "ep001" and record.stage == "audio"
    assert record.kind == "transient_network" and record.attempt == 1 and record.retry_in == 0.25
    assert record.status == 504


def test_context_survives_chaining() -> None:
    try:
        try:
            raise EpisodeNotFoundError("episode oliver/ep001 not found", show_id="oliver", episode_id="ep001",
                                       request="r-17")
        except StatekitError as inner:
            raise APIError("upload failed", stage="uploading", status=500) from inner
    except APIError as outer:
        ctx = outer.context
        assert ctx["show_id"] == "oliver" and ctx["episode_id"] == "ep001" and ctx["stage"] == "uploading"
        assert ctx["request"] == "r-17" and ctx["status"] == 500
        assert outer.own_context().get("show_id") is None
    # a plain exception wrapping a statekit error still has the context
    try:
        try:
            raise ValidationError("bad", show_id="s1", stage="mix")
        except ValidationError as inner:
            raise RuntimeError("mixing failed") from inner
    except RuntimeError as outer2:
        assert context_of(outer2)["show_id"] == "s1" and context_of(outer2)["stage"] == "mix"
    assert context_of(ValueError("plain")) == {}


def test_add_context_fills_only_what_is_missing() -> None:
    err = APIError("x", show_id="a")
    assert err.add_context(show_id="b", episode_id="e", stage=None, worker="w1") is err
    assert (err.show_id, err.episode_id, err.stage) == ("a", "e", None)
    assert err.context["worker"] == "w1" and "timestamp" in err.context


def test_log_fields_never_clash_with_the_log_record() -> None:
    fields = log_fields({"show_id": "s", "message": "m", "filename": "f", "args": 1})
    assert fields == {"show_id": "s", "ctx_message": "m", "ctx_filename": "f", "ctx_args": 1}
    logging.getLogger("statekit.test").info("x", extra=fields)  # would raise KeyError on a clash


def test_domain_errors_are_importable_and_typed() -> None:
    for name in ("ValidationError", "APIError", "AudioProcessingError", "ApprovalRequiredError",
                 "ShowNotFoundError", "EpisodeNotFoundError", "CharacterNotFoundError", "InvalidTransitionError",
                 "LockTimeoutError", "VersionConflictError", "CorruptFileError", "SchemaVersionError",
                 "LeaseExpiredError", "NetworkError"):
        cls = getattr(statekit, name)
        assert issubclass(cls, StatekitError), name
    assert issubclass(LeaseExpiredError, VersionConflictError)
    assert issubclass(NetworkError, ConnectionError)
    err = APIError("x", service="tts", status=503, retry_after=12.0)
    assert (err.service, err.status, err.retry_after) == ("tts", 503, 12.0)
    assert err.hint and err.one_line().startswith("x (hint: ")
