"""Operator controls of a long migration: paused stages, and the stages' limits in use.

Paused stages live in ``.statekit/paused.json``, a machine-owned file of the
shared store directory: every machine reads the same file (a fresh open sees
the last complete rename on a network file system with close-to-open
consistency), and a rebuild of the index, which is a cache, cannot lose it.
Claims (``runs:Runs.try_claim``) and ``next()`` read it each time they ask, so a
pause holds for every worker from the moment ``pause`` returns; runs already
leased finish (the stage drains). Each pause and resume is one line of the
store's own event log, ``.statekit/store-events.jsonl``, appended durably before
the file is replaced (the file is the truth: a line whose change the file does
not show is a pause that did not happen, as an episode's uncommitted tail).

Limits (``limits:`` in ``statekit.yaml``) are enforced inside the claim's
transaction (``index/leases:LeaseTable.claim``); here they are only reported.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from . import files as diskio
from .codecs import json_lines
from .errors import CorruptFileError, StatekitError, ValidationError
from .eventlog import event_line
from .locks import LOCKS
from .models import ClaimRefused, check_optional_text, check_text
from .shows import Shows
from .writes import Writer

MACHINE = (".statekit",)
PAUSED_FILE = "paused.json"
STORE_EVENTS_FILE = "store-events.jsonl"


@dataclass(frozen=True)
class Pause:
    """One paused stage: for every show (``show`` None) or for one show."""

    stage: str
    show: str | None
    at: str
    by: str | None = None
    note: str | None = None

    @property
    def where(self) -> str:
        return "every show" if self.show is None else f"show {self.show}"


@dataclass(frozen=True)
class Paused:
    """What ``pause`` did: the pause, whether it is new (False: it was paused
    already, nothing written), and how many runs of the stage are still live
    (they finish: the stage drains)."""

    pause: Pause
    new: bool
    live: int


@dataclass(frozen=True)
class LimitUse:
    """A stage's limits and how much of them is in use now (by the database's clock)."""

    stage: str
    concurrency: int | None
    live: int
    rate: str | None
    started: int | None
    """Runs started in the rate's window (None without a rate)."""


class Controls:
    """Pause and resume stages; say whether a claim may hand out a stage; the limits in use."""

    def __init__(self, writer: Writer, shows: Shows) -> None:
        self.writer = writer
        self.shows = shows

    # --- reading ----------------------------------------------------------------------

    def paused(self) -> list[Pause]:
        """The paused stages, as ``.statekit/paused.json`` says now."""
        path = os.path.join(self.writer.root, *MACHINE, PAUSED_FILE)
        with self.writer.folders.open_existing(MACHINE) as folder:
            raw = None if folder is None else diskio.read_file(path, dir_fd=folder)
        if raw is None:
            return []
        try:
            data = orjson.loads(raw)
            return [Pause(**item) for item in data["paused"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"{path} cannot be read as the list of paused stages ({exc})", path=path,
                                   hint="fix the file (or delete it to resume every stage), or run "
                                        "'statekit resume STAGE' for each paused stage") from None

    def refusal(self, stage: str, show: str | None = None) -> tuple[ClaimRefused | None, list[str]]:
        """Whether ``stage`` may hand out episodes (of ``show``, or of any show):
        a ``ClaimRefused`` when it is paused there, else None and the shows it is paused for."""
        pauses = [p for p in self.paused() if p.stage == stage]
        for p in pauses:
            if p.show is None or p.show == show:
                return ClaimRefused("paused", f"stage {stage!r} is paused for {p.where} (since {p.at}"
                                         f"{', by ' + p.by if p.by else ''}); 'statekit resume {stage}"
                                         f"{'' if p.show is None else ' --show ' + p.show}' resumes it"), []
        return None, sorted(p.show for p in pauses if p.show is not None)

    # --- pause and resume ---------------------------------------------------------------

    def pause(self, stage: str, show: str | None = None, *, by: str | None = None,
              note: str | None = None) -> Paused:
        """Pause ``stage`` (for ``show``, or every show): no claim or ``next()``
        hands it out until it is resumed; running leases finish."""
        self._check(stage, show, by, note)
        with self._locked():
            pauses = self.paused()
            found = [p for p in pauses if p.stage == stage and p.show == show]
            made = found[0] if found else Pause(stage, show, self.writer.clock().isoformat(), by, note)
            if not found:
                self._commit("pause", made, pauses + [made])
        live, _ = self.writer.index.leases.usage(stage, self.writer.clock(), None)
        return Paused(made, not found, live)

    def resume(self, stage: str, show: str | None = None, *, by: str | None = None,
               note: str | None = None) -> list[Pause]:
        """Resume ``stage``: every pause of it (no ``show``), or its pause for
        ``show``. The pauses lifted (none: it was not paused, nothing written)."""
        self._check(stage, show, by, note)
        with self._locked():
            pauses = self.paused()
            lifted = [p for p in pauses if p.stage == stage and (show is None or p.show == show)]
            if show is not None and any(p.stage == stage and p.show is None for p in pauses):
                # lifting the show's own pause would hand nothing out: the whole stage stays paused
                raise ValidationError(f"stage {stage!r} is paused for every show, not show by show",
                                      hint=f"resume it with 'statekit resume {stage}'; nothing was changed")
            if lifted:
                self._commit("resume", Pause(stage, show, self.writer.clock().isoformat(), by, note),
                             [p for p in pauses if p not in lifted])
            return lifted

    def _check(self, stage: str, show: str | None, by: str | None, note: str | None) -> None:
        self.writer.check_stage(stage)
        self.shows.known(show)
        check_optional_text(by, "by")
        check_optional_text(note, "note")
        if by is not None:
            check_text(by, "by")

    def _locked(self) -> Any:
        return self.writer.locks.hold(LOCKS, "controls.lock", "the store's paused stages")

    def _commit(self, kind: str, what: Pause, pauses: list[Pause]) -> None:
        """The store event (appended durably), then the new file (atomic, durable)."""
        writer = self.writer
        line = {"at": what.at, "kind": kind, "stage": what.stage, "show": what.show, "by": what.by,
                "note": what.note}
        with writer.folders.open(MACHINE, create=True) as folder:
            fd = writer.disk.open(os.path.join(writer.root, *MACHINE, STORE_EVENTS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT | diskio.O_NOFOLLOW
                                  | diskio.O_CLOEXEC, 0o666, dir_fd=folder)
            try:
                diskio.write_all(writer.disk, fd, event_line(line))
                writer.disk.fsync(fd)
            finally:
                writer.disk.close(fd)
            body = orjson.dumps({"paused": [asdict(p) for p in pauses]}, option=orjson.OPT_INDENT_2) + b"\n"
            diskio.atomic_write(writer.disk, os.path.join(writer.root, *MACHINE, PAUSED_FILE), body, dir_fd=folder)

    def store_events(self) -> list[dict[str, Any]]:
        """The lines of ``.statekit/store-events.jsonl``, oldest first (damaged lines skipped)."""
        path = os.path.join(self.writer.root, *MACHINE, STORE_EVENTS_FILE)
        with self.writer.folders.open_existing(MACHINE) as folder:
            raw = None if folder is None else diskio.read_file(path, limit=None, dir_fd=folder)
        return json_lines(raw)

    # --- limits -------------------------------------------------------------------------

    def limits(self) -> list[LimitUse]:
        """Each limited stage: its limits and how much of them is in use now."""
        used = []
        leases = self.writer.index.leases
        for stage, limit in self.writer.config.limits.items():
            window = limit.window
            live, started = leases.usage(stage, self.writer.clock(), window[1] if window else None)
            used.append(LimitUse(stage, limit.concurrency, live, limit.rate, started))
        return used

    def overview(self) -> dict[str, Any]:
        """What ``statekit status`` shows of the controls: paused stages and limits in use."""
        try:
            paused = [asdict(p) for p in self.paused()]
        except StatekitError as exc:
            paused = [{"error": exc.one_line()}]
        return {"paused": paused, "limits": [asdict(u) for u in self.limits()]}

