"""Upload an episode's media to Google Cloud Storage, once.

Layout (the audio storage document): each audio file gets a UUID and its
objects live under ``[prefix]audio/<audio_id>/``: ``audio.<ext>`` and
``thumbnail.jpg``.

An upload never creates a second object and never overwrites one. Each
attempt first reads the object's metadata: if it already holds the same
bytes (an earlier attempt whose response was lost, or a re-run after a
crash), that object is the result and nothing is sent; if it holds other
bytes, ``UploadConflictError``. Otherwise the bytes go up with
``ifGenerationMatch=0`` (create only), so a concurrent writer that got there
first makes the server answer 412, which is resolved the same way. The MD5
is sent along, so the server refuses bytes that changed on the way.

Retries follow ``statekit.taxonomy``: the client's own retries are off and
every failure is wrapped in ``NetworkError`` or ``APIError`` (service
``gcs``, the HTTP status, the object's ``gs://`` URL), so ``classify``
decides; transient kinds are retried with a logged backoff.

Needs ``google-cloud-storage`` (the ``gcs`` extra); ``statekit`` itself does
not import this module.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import google_crc32c
import requests
from google.api_core import exceptions as google_errors
from google.auth import exceptions as auth_errors
from google.cloud import storage
from pydantic import ValidationError as PydanticValidationError

from .errors import APIError, NetworkError, StatekitError, StorageError, ValidationError
from .models import GCSConfig, UploadRecord
from .taxonomy import retry

if TYPE_CHECKING:
    from .models import Episode
    from .store import Store

log = logging.getLogger("statekit")

NAMESPACE = uuid.UUID("6f1c5a52-8d3e-5b0e-9a57-3c2f4e1d7b90")
"""The namespace of derived audio ids (``audio_id_for``). Changing it moves every
re-run to new objects: never change it."""

CHUNK_QUANTUM = 256 * 1024
"""Resumable upload chunks are a multiple of this (a rule of the GCS API)."""

_EXT = re.compile(r"[a-z0-9]{1,16}")
_BLOCK = 1024 * 1024


class UploadConflictError(StatekitError, ValueError):
    """The object already exists with other content. It is never overwritten."""

    default_hint = ("statekit never overwrites an uploaded object: upload under another audio id, "
                    "or delete the object if it is wrong and upload again")

    def __init__(self, message: str, *, url: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.url = url
        self.extras.setdefault("object", url)


@dataclass(frozen=True)
class Uploaded:
    """One object in the bucket, and the local content it holds."""

    bucket: str
    name: str
    generation: int
    size: int
    md5: str
    """Base64, as GCS reports it."""
    sha256: str
    """Hex, of the local file."""
    created: bool
    """False when the object already held this content (a retry or a re-run)."""

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


@dataclass(frozen=True)
class StoredAudio:
    audio_id: str
    audio: Uploaded
    thumbnail: Uploaded | None = None


@dataclass(frozen=True)
class _Digest:
    size: int
    md5: str
    crc32c: str
    sha256: str


def audio_id_for(show: str, ep: str, sha256: str) -> str:
    """The audio id of an episode's audio content: the same inputs always give
    the same id, so a re-run after a crash lands on the same objects."""
    return str(uuid.uuid5(NAMESPACE, f"{show}/{ep}/{sha256}"))


def gcs_error(exc: BaseException, url: str, *, step: str | None = None, endpoint: str | None = None) -> StatekitError:
    """``exc`` from the GCS client or its HTTP stack, as a statekit error that
    ``classify`` understands (by HTTP status, or as a network failure).
    ``step``: what the upload was doing (e.g. "checking the object")."""
    where = f"uploading to {url} failed" + (f" while {step}" if step else "")
    if isinstance(exc, google_errors.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else None
        return APIError(f"{where}: {_http_detail(status, exc.message or str(exc))}", service="gcs", status=status,
                        object=url, hint=_status_hint(status, url))
    at = f" (endpoint {endpoint})" if endpoint else ""
    return NetworkError(f"{where}: {_reason(exc)}{at}", service="gcs", object=url,
                        hint="statekit retries after a backoff; if it keeps failing, check that the storage "
                             "endpoint is reachable, then upload again (a repeat never duplicates an object)")


def _http_detail(status: int | None, message: str) -> str:
    """"HTTP 404 Not Found: what the server said", without the request line
    the client puts in front of it, or its generic text when the server said nothing."""
    try:
        text = f"HTTP {status} {HTTPStatus(status).phrase}" if status else "HTTP error"
    except ValueError:
        text = f"HTTP {status}"
    said = re.sub(r"^[A-Z]+ \S+: ", "", " ".join(message.split()))
    if said and not said.startswith("('Request failed with status code'"):
        text += f": {_short(said)}"
    return text


def _status_hint(status: int | None, url: str) -> str:
    bucket = url.split("/")[2]
    if status == 404:
        return f"bucket '{bucket}' does not exist: create it, or fix gcs.bucket in statekit.yaml"
    if status in (401, 403):
        return f"the credentials in use may not write to bucket '{bucket}': check them and their IAM roles"
    if status is not None and (status in (408, 429) or status >= 500):
        return "statekit retries after a backoff; if it persists, check the Cloud Storage status page"
    return "the service refused the request as it is: retrying repeats it"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """What the network said, in a few words ("Connection refused"), rather
    than the HTTP stack's paragraph."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        current = current.__cause__ or current.__context__
    return f"{type(exc).__name__}: {_short(str(exc))}"


def _digest(path: str, url: str) -> _Digest:
    """Size and hashes of a local file, in one read. A missing or unreadable
    file is a ``StorageError`` naming it (nothing was uploaded)."""
    md5, sha256, crc = hashlib.md5(usedforsecurity=False), hashlib.sha256(), google_crc32c.Checksum()
    size = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                md5.update(block)
                sha256.update(block)
                crc.update(block)
                size += len(block)
    except OSError as exc:
        raise StorageError(f"cannot upload {path} to {url}: {exc.strerror or exc}", path=path, errno=exc.errno,
                           hint="check the local file; nothing was uploaded") from exc
    return _Digest(size, _b64(md5.digest()), _b64(crc.digest()), sha256.hexdigest())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the upload's outcome matters more than a leftover file
        log.warning("could not remove local file %s: %s", path, exc)


class GCSUploader:
    """Uploads files into one bucket, each at most once (see the module doc).

    ``client``: a ``google.cloud.storage.Client``; made from ``endpoint`` and
    ``project`` when not given (an ``http://`` endpoint can only be an
    emulator: it gets no credentials). ``attempts``, ``initial``, ``maximum``,
    ``sleep``: the retry policy (``statekit.taxonomy.retry``). ``chunk_size``:
    bytes per request of a resumable upload, a multiple of 256 KiB; the client
    sends files of 8 MiB or less in one request whatever it is.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: storage.Client | None = None,
        prefix: str = "",
        endpoint: str | None = None,
        project: str | None = None,
        attempts: int = 5,
        initial: float = 0.5,
        maximum: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        try:
            config = GCSConfig(bucket=bucket, prefix=prefix, endpoint=endpoint, project=project)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ValidationError(f"invalid GCS setting {field}={first.get('input')!r}: {first['msg']}",
                                  field=field, hint="bucket names are 3-222 characters of a-z, 0-9, '.', '_', "
                                                    "'-'; a prefix is empty or ends with '/'") from None
        if chunk_size is not None and (type(chunk_size) is not int or chunk_size <= 0
                                       or chunk_size % CHUNK_QUANTUM):
            raise ValidationError(f"invalid chunk_size {chunk_size!r}: it must be a positive multiple of "
                                  f"{CHUNK_QUANTUM} bytes (256 KiB)", field="chunk_size")
        self.config = config
        self.chunk_size = chunk_size
        self._retrying = retry(attempts, initial=initial, maximum=maximum, sleep=sleep)
        self.client = client if client is not None else self._make_client(config)
        self._bucket = self.client.bucket(config.bucket)

    @classmethod
    def from_config(cls, config: GCSConfig, **kw: Any) -> GCSUploader:
        """An uploader for the store's ``gcs:`` settings (``store.config.gcs``)."""
        return cls(config.bucket, prefix=config.prefix, endpoint=config.endpoint, project=config.project, **kw)

    @staticmethod
    def _make_client(config: GCSConfig) -> storage.Client:
        options = {"api_endpoint": config.endpoint} if config.endpoint else None
        emulator = bool(config.endpoint and config.endpoint.startswith("http://"))
        try:
            return storage.Client(project=config.project, client_options=options,
                                  use_auth_w_custom_endpoint=not emulator)
        except auth_errors.DefaultCredentialsError as exc:
            raise ValidationError(f"no Google Cloud credentials for bucket '{config.bucket}': {_short(str(exc))}",
                                  field="gcs", hint="run 'gcloud auth application-default login' or set "
                                                    "GOOGLE_APPLICATION_CREDENTIALS") from exc

    def __repr__(self) -> str:
        return f"GCSUploader(gs://{self.config.bucket}/{self.config.prefix})"

    @property
    def bucket(self) -> str:
        return self.config.bucket

    def url(self, object_name: str) -> str:
        return f"gs://{self.config.bucket}/{object_name}"

    def audio_objects(self, audio_id: str, ext: str) -> tuple[str, str]:
        """The object names of an audio file and its thumbnail."""
        folder = f"{self.config.prefix}audio/{audio_id}/"
        return f"{folder}audio.{ext}", f"{folder}thumbnail.jpg"

    # --- one object ---------------------------------------------------------------

    def upload_file(self, local_path: str | os.PathLike[str], object_name: str, *,
                    content_type: str | None = None) -> Uploaded:
        """Upload a local file as ``object_name`` (no prefix added), unless the
        object already holds these bytes. Network calls, retried on transient
        failures; ``UploadConflictError`` if the object holds other bytes."""
        path = os.fspath(local_path)
        _check_object_name(object_name)
        digest = _digest(path, self.url(object_name))
        return self._upload(path, object_name, digest, content_type)

    def _upload(self, path: str, name: str, digest: _Digest, content_type: str | None) -> Uploaded:
        if content_type is None:
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        attempt: Callable[..., Uploaded] = self._retrying(self._upload_once)
        return attempt(path, name, digest, content_type)

    def _upload_once(self, path: str, name: str, digest: _Digest, content_type: str) -> Uploaded:
        url = self.url(name)
        existing = self._existing(name)
        if existing is not None:
            return self._same_content(existing, path, digest)
        blob = self._bucket.blob(name, chunk_size=self.chunk_size)
        blob.md5_hash = digest.md5  # the server refuses bytes that do not match
        blob.metadata = {"sha256": digest.sha256}
        try:
            blob.upload_from_filename(path, content_type=content_type, if_generation_match=0, retry=None)
        except google_errors.PreconditionFailed:
            # Created since we looked: a concurrent upload of the same object.
            existing = self._existing(name)
            if existing is None:
                raise APIError(f"uploading to {url} failed: the object appeared and vanished meanwhile",
                               service="gcs", object=url) from None
            return self._same_content(existing, path, digest)
        except (google_errors.GoogleAPICallError, requests.RequestException, auth_errors.TransportError,
                ConnectionError, TimeoutError) as exc:
            raise gcs_error(exc, url, endpoint=self.client.api_endpoint) from exc
        log.info("uploaded %s to %s (generation %s, %d bytes)", path, url, blob.generation, digest.size,
                 extra={"object": url, "generation": blob.generation})
        return Uploaded(self.config.bucket, name, int(blob.generation), digest.size, blob.md5_hash or digest.md5,
                        digest.sha256, created=True)

    def _existing(self, name: str) -> storage.Blob | None:
        try:
            return self._bucket.get_blob(name, retry=None)
        except (google_errors.GoogleAPICallError, requests.RequestException, auth_errors.TransportError,
                ConnectionError, TimeoutError) as exc:
            raise gcs_error(exc, self.url(name), step="checking the object",
                            endpoint=self.client.api_endpoint) from exc

    def _same_content(self, existing: storage.Blob, path: str, digest: _Digest) -> Uploaded:
        url = self.url(existing.name)
        if existing.md5_hash is not None:
            same = existing.md5_hash == digest.md5
        else:  # composite objects have no MD5
            same = existing.crc32c is not None and existing.crc32c == digest.crc32c
        if not same:
            raise UploadConflictError(
                f"{url} already exists with other content ({existing.size} bytes, md5 {existing.md5_hash}) "
                f"than {path} ({digest.size} bytes, md5 {digest.md5}); not overwritten", url=url)
        log.info("%s already holds %s (generation %s); not uploaded again", url, path, existing.generation,
                 extra={"object": url, "generation": existing.generation})
        return Uploaded(self.config.bucket, existing.name, int(existing.generation), digest.size,
                        existing.md5_hash or digest.md5, digest.sha256, created=False)

    # --- an audio file and its thumbnail ------------------------------------------------

    def store_audio_file(
        self,
        audio_path: str | os.PathLike[str],
        thumbnail_path: str | os.PathLike[str] | None = None,
        *,
        audio_id: str | None = None,
        ext: str | None = None,
        content_type: str | None = None,
        remove_local: bool = False,
    ) -> StoredAudio:
        """Upload an audio file (and its thumbnail, a JPEG) under a new audio id,
        or under ``audio_id`` (a UUID) to make a repeat land on the same objects.
        ``ext``: the audio object's extension when the local name has none.
        Both local files are checked before anything is uploaded. With
        ``remove_local``, both are removed afterwards, whatever happened."""
        audio = os.fspath(audio_path)
        thumbnail = os.fspath(thumbnail_path) if thumbnail_path is not None else None
        try:
            audio_id = _checked_audio_id(audio_id)
            audio_name, thumbnail_name = self.audio_objects(audio_id, _checked_ext(ext, audio))
            audio_digest = _digest(audio, self.url(audio_name))
            thumbnail_digest = _digest(thumbnail, self.url(thumbnail_name)) if thumbnail else None
            stored_audio = self._upload(audio, audio_name, audio_digest, content_type)
            stored_thumbnail = None
            if thumbnail is not None and thumbnail_digest is not None:
                stored_thumbnail = self._upload(thumbnail, thumbnail_name, thumbnail_digest, "image/jpeg")
            return StoredAudio(audio_id, stored_audio, stored_thumbnail)
        finally:
            if remove_local:
                for path in (audio, thumbnail):
                    if path is not None:
                        _remove_quietly(path)


def _check_object_name(name: str) -> None:
    if not name or len(name.encode("utf-8")) > 1024 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValidationError(f"invalid object name {name!r}: 1-1024 bytes of UTF-8 without control characters",
                              field="object_name")


def _checked_audio_id(audio_id: str | None) -> str:
    if audio_id is None:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(audio_id))
    except (ValueError, TypeError, AttributeError):
        raise ValidationError(f"invalid audio id {audio_id!r}: it must be a UUID", field="audio_id",
                              hint="leave it out for a new one, or derive one with audio_id_for()") from None


def _checked_ext(ext: str | None, path: str) -> str:
    if ext is None:
        ext = os.path.splitext(path)[1].lstrip(".")
    ext = ext.lower().lstrip(".")
    if not _EXT.fullmatch(ext):
        raise ValidationError(f"cannot name the audio object of {path}: extension {ext!r} is not 1-16 of a-z, 0-9",
                              field="ext", hint="pass ext='wav' (or mp3, m4a...)")
    return ext


# --- store glue ------------------------------------------------------------------------


def upload_asset(store: Store, show: str, ep: str, name: str, uploader: GCSUploader, *,
                 thumbnail: str | None = None) -> Episode:
    """Upload the episode's asset ``name`` (and the asset ``thumbnail``) and
    record where in ``episode.uploads`` (one write, one ``upload`` event).
    Both assets are hashed first (``store.verify_asset``): an unknown, missing
    or damaged asset fails before anything is uploaded. The audio id derives
    from show, episode and content, so a repeat finds the same objects and,
    when they are unchanged, writes nothing."""
    audio_path = store.verify_asset(show, ep, name)
    thumbnail_path = store.verify_asset(show, ep, thumbnail) if thumbnail is not None else None
    episode = store.get(show, ep)
    asset = episode.assets[name]
    stored = uploader.store_audio_file(audio_path, thumbnail_path, audio_id=audio_id_for(show, ep, asset.sha256),
                                       ext=_asset_ext(asset.source, asset.media_type, name),
                                       content_type=None if asset.media_type == "application/octet-stream"
                                       else asset.media_type)
    now = store.clock()
    records = {name: _record(stored.audio, stored.audio_id, now)}
    if thumbnail is not None and stored.thumbnail is not None:
        records[thumbnail] = _record(stored.thumbnail, stored.audio_id, now)
    if all(_same_upload(episode.uploads.get(k), r) for k, r in records.items()):
        return episode  # the objects already recorded: nothing to write
    return store.record_uploads(show, ep, records)


def _record(uploaded: Uploaded, audio_id: str, at: datetime) -> UploadRecord:
    return UploadRecord(url=uploaded.url, bucket=uploaded.bucket, object=uploaded.name,
                        generation=uploaded.generation, sha256=uploaded.sha256, md5=uploaded.md5,
                        audio_id=audio_id, at=at)


def _same_upload(old: UploadRecord | None, new: UploadRecord) -> bool:
    return old is not None and old.model_dump(exclude={"at"}) == new.model_dump(exclude={"at"})


def _asset_ext(source: str | None, media_type: str, name: str) -> str:
    """The audio object's extension: the source's, else the media type's."""
    if source:
        ext = os.path.splitext(source.split("?")[0])[1].lstrip(".").lower()
        if _EXT.fullmatch(ext):
            return ext
    guessed = _MEDIA_EXT.get(media_type) or mimetypes.guess_extension(media_type) or ""
    ext = guessed.lstrip(".")
    if not _EXT.fullmatch(ext):
        raise ValidationError(f"cannot tell the file type of asset '{name}' (media type {media_type}, source "
                              f"{source!r})", field="media_type",
                              hint="add the asset again with media_type='audio/wav' (or mpeg, mp4...)")
    return ext


# mimetypes does not know every audio type, and guesses odd ones for some.
_MEDIA_EXT: Mapping[str, str] = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3",
                                 "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/ogg": "ogg", "audio/flac": "flac",
                                 "audio/aac": "aac", "audio/opus": "opus", "audio/webm": "webm"}
