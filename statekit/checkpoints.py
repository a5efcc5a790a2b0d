"""Checkpoints: a stage's intermediate results (``checkpoints/<stage>.json``).

The file is written durably first, carrying its own sha256; then the write
path records the hash in the episode (one ``checkpoint`` event). A damaged
checkpoint is caught on load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from . import files as diskio
from . import packed
from .codecs import JSON_CODEC
from .errors import CorruptFileError, SchemaVersionError, ValidationError
from .ids import check_id
from .models import CHECKPOINT_SCHEMA, NOT_UTF8_HINT, CheckpointRecord, Episode, find_bad_text
from .parsing import canonical, read_checkpoint, sha256
from .writes import Writer

Extra = Callable[[Episode, datetime], dict[str, Any]]
"""``extra(current, now)``: may refuse the write (raise) or return more fields to change in it."""


class Checkpoints:
    """Checkpoints of one store's episodes, written through its ``writer``."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def save(self, show: str, ep: str, stage: str, data: Mapping[str, Any], *, extra: Extra | None = None,
             event_extra: Mapping[str, Any] | None = None) -> Episode:
        """Write ``checkpoints/<stage>.json`` durably, then record its hash in
        the episode (version + 1, one ``checkpoint`` event); ``extra`` and
        ``event_extra``: more fields for the episode and the event (a run's lease)."""
        writer = self.writer
        check_id(show, "show id")
        check_id(ep, "episode id")
        writer.check_stage(stage)
        if not isinstance(data, Mapping):
            raise ValidationError(f"checkpoint data must be a mapping, got {type(data).__name__}")
        payload = dict(data)
        try:
            body_bytes = canonical(payload)
        except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
            where = find_bad_text(payload, "checkpoint data")
            if where is not None:
                raise ValidationError(where, field="data", hint=NOT_UTF8_HINT) from None
            raise ValidationError(f"checkpoint data must be JSON (finite numbers, text keys): {exc}",
                                  field="data") from None
        digest = sha256(body_bytes)

        def write_file(new: Episode) -> None:
            body = {"schema_version": CHECKPOINT_SCHEMA, "stage": stage,
                    "saved_at": new.updated_at.isoformat(), "sha256": digest, "size": len(body_bytes),
                    "data": payload}
            with writer.folders.open(("shows", show, "episodes", ep, "checkpoints"), create=True) as folder:
                path = writer.paths(show, ep).checkpoint(stage)
                diskio.atomic_write(writer.disk, path, JSON_CODEC.dump_plain(body), dir_fd=folder)
                packed.drop_packed(writer.disk, path, dir_fd=folder)  # an older one retention compressed

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            more = extra(m, now) if extra is not None else {}
            record = CheckpointRecord(sha256=digest, size=len(body_bytes), at=now)
            new = m.model_copy(update={**more, "version": m.version + 1, "updated_at": now,
                                       "checkpoints": {**m.checkpoints, stage: record}})
            return new, {"kind": "checkpoint", "checkpoint": stage, **(event_extra or {})}

        return writer.write(show, ep, change, before_commit=write_file)

    def load(self, show: str, ep: str, stage: str) -> dict[str, Any] | None:
        """The data saved for ``stage``, or None if none was saved.
        ``CorruptFileError`` (naming the file) if it is damaged."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        self.writer.check_stage(stage)
        return read_checkpoint(self.writer.require_folders(show, ep).checkpoint(stage))

    def resume_stage(self, show: str, ep: str) -> str | None:
        """The latest stage (in pipeline order) whose checkpoint is intact."""
        for stage in reversed(list(self.writer.pipeline.stages)):
            try:
                if self.load(show, ep, stage) is not None:
                    return stage
            except (CorruptFileError, SchemaVersionError):
                continue
        return None
