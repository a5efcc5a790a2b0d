"""The GCS upload backend against a real GCS JSON API emulator (its own
process on a loopback port) through the real ``google.cloud.storage`` client.
No mocks: faults are a killed emulator, or a response the client drops."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.storage")
pytest.importorskip("gcp_storage_emulator")

import requests  # noqa: E402

from statekit import (  # noqa: E402
    APIError,
    ErrorKind,
    NetworkError,
    StatekitError,
    StorageError,
    Store,
    ValidationError,
    classify,
)
from statekit.gcs import GCSUploader, UploadConflictError, audio_id_for, gcs_error  # noqa: E402
from statekit.models import GCSConfig  # noqa: E402

from .gcs_emulator import Emulator, free_port, resumable_sessions  # noqa: E402

MiB = 1024 * 1024


def no_sleep(seconds: float) -> None:
    pass


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulator for the module; each test uses its own bucket."""
    emu = Emulator(tmp_path_factory.mktemp("gcs"))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def bucket(emulator: Emulator) -> str:
    return emulator.create_bucket()


@pytest.fixture
def uploader(emulator: Emulator, bucket: str) -> GCSUploader:
    return GCSUploader(bucket, client=emulator.client(), sleep=no_sleep)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def md5_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- what the emulator is -------------------------------------------------------------


def test_emulator_ignores_generation_preconditions(emulator: Emulator, bucket: str) -> None:
    """Why statekit reads an object before uploading it: this emulator does not
    enforce ifGenerationMatch (real GCS answers 412), so the read is what keeps
    uploads idempotent here. If this fails, the emulator learned preconditions:
    then also test the 412 branch of GCSUploader._upload_once against it."""
    blob = emulator.client().bucket(bucket).blob("x")
    blob.upload_from_string(b"one", if_generation_match=0, retry=None)
    emulator.client().bucket(bucket).blob("x").upload_from_string(b"two", if_generation_match=0, retry=None)
    assert emulator.read(bucket, "x") == b"two"


# --- uploads ---------------------------------------------------------------------------


def test_store_audio_file_layout_and_content(emulator: Emulator, bucket: str, uploader: GCSUploader,
                                             tmp_path: Path) -> None:
    audio = os.urandom(300_000)
    thumb = b"\xff\xd8\xff\xe0" + os.urandom(2000)
    stored = uploader.store_audio_file(write(tmp_path / "take.WAV", audio), write(tmp_path / "t.jpg", thumb))

    assert uuid.UUID(stored.audio_id).version == 4
    assert stored.audio.name == f"audio/{stored.audio_id}/audio.wav"
    assert stored.thumbnail is not None and stored.thumbnail.name == f"audio/{stored.audio_id}/thumbnail.jpg"
    assert stored.audio.url == f"gs://{bucket}/audio/{stored.audio_id}/audio.wav"
    assert stored.audio.created and stored.thumbnail.created
    objects = emulator.objects(bucket)
    assert sorted(objects) == [stored.audio.name, stored.thumbnail.name]
    assert emulator.read(bucket, stored.audio.name) == audio
    assert emulator.read(bucket, stored.thumbnail.name) == thumb
    got = objects[stored.audio.name]
    assert got.generation == stored.audio.generation
    assert got.md5_hash == stored.audio.md5 == md5_b64(audio)
    assert got.metadata == {"sha256": hashlib.sha256(audio).hexdigest()} and stored.audio.sha256 == got.metadata["sha256"]
    assert got.content_type == "audio/x-wav" and objects[stored.thumbnail.name].content_type == "image/jpeg"
    assert (tmp_path / "take.WAV").exists(), "local files are kept unless remove_local"


def test_repeat_is_a_no_op_on_the_same_object(emulator: Emulator, bucket: str, uploader: GCSUploader,
                                              tmp_path: Path) -> None:
    audio_id = str(uuid.uuid4())
    path = write(tmp_path / "a.mp3", os.urandom(50_000))
    first = uploader.store_audio_file(path, audio_id=audio_id)
    again = uploader.store_audio_file(path, audio_id=audio_id)
    assert first.audio.created and not again.audio.created
    assert again.audio.generation == first.audio.generation
    assert again.audio.name == first.audio.name == f"audio/{audio_id}/audio.mp3"
    (blob,) = emulator.objects(bucket).values()
    assert blob.generation == first.audio.generation


def test_other_content_is_a_conflict_and_never_overwrites(emulator: Emulator, bucket: str, uploader: GCSUploader,
                                                          tmp_path: Path) -> None:
    first = uploader.upload_file(write(tmp_path / "a", b"original"), "audio/x/audio.wav")
    with pytest.raises(UploadConflictError) as caught:
        uploader.upload_file(write(tmp_path / "b", b"something else"), "audio/x/audio.wav")
    err = caught.value
    assert classify(err) is ErrorKind.USER_INPUT_INVALID and not classify(err).transient
    assert f"gs://{bucket}/audio/x/audio.wav" in err.one_line() and "\n" not in err.one_line()
    assert err.context["object"] == f"gs://{bucket}/audio/x/audio.wav"
    (blob,) = emulator.objects(bucket).values()
    assert blob.generation == first.generation and emulator.read(bucket, blob.name) == b"original"


def test_lost_response_is_retried_without_a_duplicate(emulator: Emulator, bucket: str, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The server creates the object but its answer never reaches us: the retry
    finds the object holding our bytes and returns it (same generation)."""
    lost = []

    def lose_upload_answer(response: requests.Response) -> None:
        if response.request.method == "POST" and "/upload/" in response.request.url and not lost:
            lost.append(response.json()["generation"])
            raise requests.ConnectionError("connection reset while reading the response")

    uploader = GCSUploader(bucket, client=emulator.client(lose_upload_answer), attempts=3, sleep=no_sleep)
    with caplog.at_level(logging.WARNING, logger="statekit"):
        got = uploader.upload_file(write(tmp_path / "a.wav", b"RIFF" + os.urandom(10_000)), "audio/y/audio.wav")
    assert lost and not got.created and got.generation == int(lost[0])
    assert [b.generation for b in emulator.objects(bucket).values()] == [got.generation]
    assert any("transient_network" in r.getMessage() and "attempt 1 of 3" in r.getMessage() for r in caplog.records)


def test_emulator_killed_mid_upload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A chunked resumable upload loses its server after the first chunk: a
    clear transient error; once the emulator is back (same port, same data),
    the upload is retried and leaves exactly one object with the right bytes."""
    emu = Emulator(tmp_path / "gcs")
    emu.start()
    try:
        bucket = emu.create_bucket()
        data = os.urandom(9 * MiB + 123)  # over 8 MiB: the client uploads it in chunks
        path = write(tmp_path / "big.wav", data)
        chunks: list[str] = []

        def kill_after_first_chunk(response: requests.Response) -> None:
            if response.status_code == 308:  # "Resume Incomplete": a chunk was stored
                chunks.append(response.headers["Range"])
                if len(chunks) == 1:
                    emu.kill()

        # 1. No retries: the failure itself, as the caller sees it.
        once = GCSUploader(bucket, client=emu.client(kill_after_first_chunk), attempts=1, chunk_size=MiB)
        with pytest.raises(NetworkError) as caught:
            once.upload_file(path, "audio/z/audio.wav")
        err = caught.value
        url = f"gs://{bucket}/audio/z/audio.wav"
        assert chunks == ["bytes=0-1048575"]
        assert classify(err) is ErrorKind.TRANSIENT_NETWORK
        line = err.one_line()
        assert "\n" not in line and url in line and "Connection refused" in line and "hint:" in line
        assert err.context["object"] == url and err.extras["service"] == "gcs"

        emu.start()
        assert emu.objects(bucket) == {} and len(resumable_sessions(emu.data_dir)) == 1  # the partial upload

        # 2. With retries: killed again after a chunk; the backoff brings the emulator back.
        chunks.clear()
        waits: list[float] = []

        def restart(seconds: float) -> None:
            waits.append(seconds)
            emu.start()

        retrying = GCSUploader(bucket, client=emu.client(kill_after_first_chunk), attempts=3, initial=0.01,
                               chunk_size=MiB, sleep=restart)
        with caplog.at_level(logging.WARNING, logger="statekit"):
            got = retrying.upload_file(path, "audio/z/audio.wav")
        assert len(waits) == 1 and got.created and len(chunks) == 1 + 9  # 9 of the 10 chunks answer 308
        assert any(url in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)

        objects = emu.objects(bucket)
        assert list(objects) == ["audio/z/audio.wav"]
        assert objects["audio/z/audio.wav"].generation == got.generation
        assert objects["audio/z/audio.wav"].md5_hash == md5_b64(data) and emu.read(bucket, "audio/z/audio.wav") == data
    finally:
        emu.stop()


# --- local files -----------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "permanent error", "retries exhausted"])
def test_remove_local_whatever_happens(outcome: str, emulator: Emulator, bucket: str, tmp_path: Path) -> None:
    audio = write(tmp_path / "a.wav", b"RIFF audio")
    thumb = write(tmp_path / "t.jpg", b"\xff\xd8 jpeg")
    audio_id = str(uuid.uuid4())
    if outcome == "retries exhausted":  # nothing listens on this port
        uploader = GCSUploader(bucket, endpoint=f"http://127.0.0.1:{free_port()}", attempts=2, sleep=no_sleep)
    else:
        uploader = GCSUploader(bucket, client=emulator.client(), sleep=no_sleep)
    if outcome == "permanent error":
        emulator.client().bucket(bucket).blob(f"audio/{audio_id}/thumbnail.jpg").upload_from_string(b"other")

    if outcome == "success":
        stored = uploader.store_audio_file(audio, thumb, audio_id=audio_id, remove_local=True)
        assert stored.thumbnail is not None and emulator.read(bucket, stored.thumbnail.name) == b"\xff\xd8 jpeg"
    else:
        expected = UploadConflictError if outcome == "permanent error" else NetworkError
        with pytest.raises(expected):
            uploader.store_audio_file(audio, thumb, audio_id=audio_id, remove_local=True)
    assert not audio.exists() and not thumb.exists()


# --- bad input -------------------------------------------------------------------------


def test_bad_input_is_one_line_and_uploads_nothing(emulator: Emulator, bucket: str, uploader: GCSUploader,
                                                   tmp_path: Path) -> None:
    good = write(tmp_path / "a.wav", b"RIFF")
    cases = [
        (StorageError, lambda: uploader.store_audio_file(good, tmp_path / "missing.jpg")),
        (StorageError, lambda: uploader.upload_file(tmp_path / "missing.wav", "audio/m/audio.wav")),
        (ValidationError, lambda: uploader.store_audio_file(good, audio_id="not-a-uuid")),
        (ValidationError, lambda: uploader.store_audio_file(write(tmp_path / "noext", b"x"))),
        (ValidationError, lambda: uploader.upload_file(good, "")),
        (ValidationError, lambda: GCSUploader("Bad_Bucket!", client=emulator.client())),
        (ValidationError, lambda: GCSUploader(bucket, client=emulator.client(), prefix="no-slash")),
        (ValidationError, lambda: GCSUploader(bucket, client=emulator.client(), chunk_size=1000)),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as caught:
            call()
        err = caught.value
        assert isinstance(err, StatekitError) and "\n" not in err.one_line() and err.hint
        assert not classify(err).transient, err
    missing = _raised(lambda: uploader.upload_file(tmp_path / "gone.wav", "o"))
    assert str(tmp_path / "gone.wav") in missing.one_line() and classify(missing) is ErrorKind.USER_INPUT_INVALID
    assert emulator.objects(bucket) == {}


def test_missing_bucket_is_permanent_and_not_retried(emulator: Emulator, tmp_path: Path) -> None:
    waits: list[float] = []
    uploader = GCSUploader("no-such-bucket", client=emulator.client(), attempts=5, sleep=waits.append)
    with pytest.raises(APIError) as caught:
        uploader.upload_file(write(tmp_path / "a.wav", b"RIFF"), "audio/q/audio.wav")
    err = caught.value
    assert err.status == 404 and classify(err) is ErrorKind.USER_INPUT_INVALID and waits == []
    assert "gs://no-such-bucket/audio/q/audio.wav" in err.one_line() and "does not exist" in err.one_line()


def _raised(call: Callable[[], object]) -> StatekitError:
    try:
        call()
    except StatekitError as exc:
        return exc
    raise AssertionError("nothing raised")


# --- configuration and classification ------------------------------------------------------------


def test_from_config_uses_prefix_and_endpoint(emulator: Emulator, bucket: str, tmp_path: Path) -> None:
    """No client given: one is made from the endpoint (an http:// emulator gets no credentials)."""
    uploader = GCSUploader.from_config(GCSConfig(bucket=bucket, prefix="staging/", endpoint=emulator.endpoint),
                                       sleep=no_sleep)
    stored = uploader.store_audio_file(write(tmp_path / "a.flac", b"fLaC"), audio_id=audio_id_for("s", "e", "0" * 64))
    assert stored.audio_id == audio_id_for("s", "e", "0" * 64) != audio_id_for("s", "e2", "0" * 64)
    assert list(emulator.objects(bucket)) == [f"staging/audio/{stored.audio_id}/audio.flac"]


@pytest.mark.parametrize(("exc", "kind"), [
    (requests.ConnectionError("reset"), ErrorKind.TRANSIENT_NETWORK),
    (requests.Timeout("slow"), ErrorKind.TRANSIENT_NETWORK),
    (ConnectionResetError(104, "Connection reset by peer"), ErrorKind.TRANSIENT_NETWORK),
])
def test_network_failures_are_transient(exc: BaseException, kind: ErrorKind) -> None:
    err = gcs_error(exc, "gs://b/o")
    assert isinstance(err, NetworkError) and classify(err) is kind and "gs://b/o" in err.one_line()


@pytest.mark.parametrize(("status", "transient"), [(500, True), (503, True), (429, True), (408, True),
                                                   (400, False), (403, False), (404, False), (410, False)])
def test_http_statuses_classify_by_status(status: int, transient: bool) -> None:
    from google.api_core import exceptions as google_errors

    err = gcs_error(google_errors.from_http_status(status, "boom"), "gs://b/o")
    assert isinstance(err, APIError) and err.status == status and err.extras["service"] == "gcs"
    assert classify(err).transient is transient


# --- store glue ------------------------------------------------------------------------


def test_upload_asset_records_the_objects_and_repeats_are_no_ops(emulator: Emulator, bucket: str,
                                                                 uploader: GCSUploader, tmp_path: Path) -> None:
    from statekit import Store
    from statekit.gcs import upload_asset

    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep001", title="Stars")
    audio = b"RIFF" + os.urandom(20_000)
    store.add_asset("oliver", "ep001", write(tmp_path / "take.wav", audio), name="audio")
    store.add_asset("oliver", "ep001", write(tmp_path / "cover.jpg", b"\xff\xd8 jpeg"), kind="image", name="cover")
    sha = hashlib.sha256(audio).hexdigest()
    audio_id = audio_id_for("oliver", "ep001", sha)

    ep = upload_asset(store, "oliver", "ep001", "audio", uploader, thumbnail="cover")
    record = ep.uploads["audio"]
    assert record.url == f"gs://{bucket}/audio/{audio_id}/audio.wav" and record.audio_id == audio_id
    assert record.sha256 == sha and record.md5 == md5_b64(audio)
    assert ep.uploads["cover"].url == f"gs://{bucket}/audio/{audio_id}/thumbnail.jpg"
    objects = emulator.objects(bucket)
    assert sorted(objects) == [f"audio/{audio_id}/audio.wav", f"audio/{audio_id}/thumbnail.jpg"]
    assert record.generation == objects[f"audio/{audio_id}/audio.wav"].generation
    assert emulator.read(bucket, f"audio/{audio_id}/audio.wav") == audio
    assert store.events("oliver", "ep001")[-1].kind == "upload"

    events = store.events("oliver", "ep001")
    again = upload_asset(store, "oliver", "ep001", "audio", uploader, thumbnail="cover")
    assert again.version == ep.version and again.uploads == ep.uploads
    assert store.events("oliver", "ep001") == events
    assert emulator.objects(bucket).keys() == objects.keys()
    assert [o.generation for o in emulator.objects(bucket).values()] == [o.generation for o in objects.values()]


def test_upload_asset_after_a_crash_before_recording(emulator: Emulator, bucket: str, uploader: GCSUploader,
                                                      tmp_path: Path) -> None:
    """A worker uploaded, then died before recording: the re-run lands on the
    same object (derived audio id), uploads nothing and records it."""
    from statekit import Store
    from statekit.gcs import upload_asset

    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep002")
    ep = store.add_asset("oliver", "ep002", b"ID3 mp3 bytes", name="audio", media_type="audio/mpeg")
    sha = ep.assets["audio"].sha256
    first = uploader.store_audio_file(store.asset_path("oliver", "ep002", "audio"),
                                      audio_id=audio_id_for("oliver", "ep002", sha), ext="mp3")

    ep = upload_asset(store, "oliver", "ep002", "audio", uploader)
    assert ep.uploads["audio"].url == first.audio.url and ep.uploads["audio"].generation == first.audio.generation
    assert first.audio.name.endswith("/audio.mp3") and len(emulator.objects(bucket)) == 1


def test_upload_asset_bad_input_uploads_nothing(emulator: Emulator, bucket: str, uploader: GCSUploader,
                                                tmp_path: Path) -> None:
    from statekit import AssetNotFoundError, CorruptFileError, EpisodeNotFoundError, Store
    from statekit.gcs import upload_asset

    store = Store.init(tmp_path / "store")
    store.create("oliver", "ep003")
    store.add_asset("oliver", "ep003", b"RIFF", name="audio", media_type="audio/wav")
    store.add_asset("oliver", "ep003", b"\xff\xd8 jpeg", name="cover")
    damaged = Path(store.asset_path("oliver", "ep003", "cover"))
    damaged.chmod(0o644)
    damaged.write_bytes(b"\xff\xd8 jpeg, changed on disk")
    for kind, call in [
        (CorruptFileError, lambda: upload_asset(store, "oliver", "ep003", "audio", uploader, thumbnail="cover")),
        (AssetNotFoundError, lambda: upload_asset(store, "oliver", "ep003", "nope", uploader)),
        (AssetNotFoundError, lambda: upload_asset(store, "oliver", "ep003", "audio", uploader, thumbnail="nope")),
        (EpisodeNotFoundError, lambda: upload_asset(store, "oliver", "ep999", "audio", uploader)),
    ]:
        err = _raised(call)
        assert isinstance(err, kind) and "\n" not in err.one_line(), err
    assert emulator.objects(bucket) == {}
    assert store.get("oliver", "ep003").uploads == {}


def test_the_cli_uploads_an_asset_once(emulator: Emulator, bucket: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from statekit.cli import main

    store = Store.init(tmp_path / "store")
    config = Path(store.root, "statekit.yaml")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, ["--root", store.root, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    store.create("s", "e")
    store.add_asset("s", "e", write(tmp_path / "take.wav", b"RIFF take one"), name="audio.wav")
    assert "no 'gcs:' settings" in run("asset", "upload", "s/e", "audio.wav", code=2)
    assert "\ngcs: null\n" in config.read_text()
    config.write_text(config.read_text().replace("\ngcs: null\n", f"\ngcs:\n  bucket: {bucket}\n  endpoint: {emulator.endpoint}\n"))
    audio_id = audio_id_for("s", "e", Store.open(store.root).get("s", "e").assets["audio.wav"].sha256)
    url = f"gs://{bucket}/audio/{audio_id}/audio.wav"
    assert f"s/e: audio.wav uploaded {url}" in run("asset", "upload", "s/e", "audio.wav")
    assert f"s/e: audio.wav already at {url}" in run("asset", "upload", "s/e", "audio.wav")
    assert list(emulator.objects(bucket)) == [f"audio/{audio_id}/audio.wav"]
    assert url in run("asset", "list", "s/e")
    assert "no asset 'nope.wav'" in run("asset", "upload", "s/e", "nope.wav", code=2)
