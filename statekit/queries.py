"""Questions about many episodes, answered by the index (one query each)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from .controls import Controls
from .errors import EpisodeNotFoundError, ValidationError
from .ids import check_id
from .models import Episode, trusted_episode
from .shows import Shows
from .writes import Writer


def models(docs: list[Any]) -> list[Episode]:
    """Episodes from the index's copies of their files (each made from a
    checked model: ``trusted_episode``, which skips the checks in Python;
    a copy as JSON text, ``decoded=False``, is read by pydantic's core)."""
    return [trusted_episode(d) for d in docs]


class Queries:
    """The store's read-only questions: arguments checked here, answers from ``writer.index``."""

    def __init__(self, writer: Writer, shows: Shows, controls: Controls | None = None) -> None:
        self.writer = writer
        self.shows = shows
        self.controls = controls

    def marked(self, found: list[Episode], show: str | None = None) -> list[Episode]:
        """``found``, each episode whose file holds a pending hand edit marked (``Episode.pending``),
        as the index's ``pending`` column says: one query of the few rows that have one."""
        if not found or not self.writer.chained:
            return found
        pending = self.writer.index.pending(show)
        if not pending:
            return found
        out = []
        for ep in found:
            hit = pending.get((ep.show_id, ep.episode_id))
            if hit is not None:
                path, edit = hit
                ep = ep.with_pending(os.path.join(self.writer.root, path), edit.get("fields"), edit.get("error"))
            out.append(ep)
        return out

    def counts(self, show: str | None = None) -> dict[str, int]:
        self.shows.known(show)
        return self.writer.index.counts(show)

    def next(self, stage: str, limit: int = 10) -> list[Episode]:
        self.writer.check_stage(stage)
        if type(limit) is not int or limit < 1:
            raise ValidationError(f"limit must be a positive integer, got {limit!r}")
        skip: list[str] = []
        if self.controls is not None:  # a paused stage hands nothing out (for the shows it is paused for)
            refused, skip = self.controls.refusal(stage)
            if refused is not None:
                return []
        return self.marked(models(self.writer.index.next(stage, limit, self.writer.clock(), skip, decoded=False)))

    def costs(self, by: str = "stage", show: str | None = None) -> dict[str, float]:
        if by not in ("stage", "show"):
            raise ValidationError(f"costs by {by!r}: choose 'stage' or 'show'")
        self.shows.known(show)
        return self.writer.index.costs(by, show)

    def with_errors(self, show: str | None = None) -> list[Episode]:
        self.shows.known(show)
        return self.marked(models(self.writer.index.with_errors(show, decoded=False)), show)

    def stuck(self, older_than: timedelta, show: str | None = None) -> list[Episode]:
        if not isinstance(older_than, timedelta) or older_than.total_seconds() < 0:
            raise ValidationError(f"older_than must be a non-negative timedelta, got {older_than!r}")
        self.shows.known(show)
        return self.marked(models(self.writer.index.stuck(self.writer.clock() - older_than, show, decoded=False)), show)

    def episodes(self, show: str | None = None, stage: str | None = None, *, limit: int | None = None,
                 after: str | None = None) -> list[Episode]:
        if stage is not None:
            self.writer.check_stage(stage)
        self.shows.known(show)
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValidationError(f"limit must be a positive integer, got {limit!r}")
        start = None
        if after is not None:
            start = self.page_start(after, show)
        return self.marked(models(self.writer.index.episode_data(show, stage, decoded=False, limit=limit,
                                                                 after=start)), show)

    def page_start(self, after: str, show: str | None) -> tuple[Any, ...]:
        """The place in show order of ``after`` ("SHOW/EP": the last episode of the page before), checked."""
        if not isinstance(after, str) or after.count("/") != 1:
            raise ValidationError(f"after must name an episode as SHOW/EP, got {after!r}",
                                  hint="pass the last episode of the page before, e.g. 'oliver/ep020'")
        after_show, after_ep = after.split("/")
        check_id(after_show, "show id")
        check_id(after_ep, "episode id")
        if show is not None and after_show != show:
            raise ValidationError(f"after names {after}, an episode of another show than {show!r}",
                                  hint=f"pass the last episode of the page before, one of {show!r}")
        key = self.writer.index.order_key(after_show, after_ep)
        if key is None:
            raise EpisodeNotFoundError(f"episode {after} is not in the index, so no page can start after it",
                                       show_id=after_show, episode_id=after_ep,
                                       hint="it was deleted, or the name is wrong: list again from the start, without 'after'")
        return key

    def live_runs(self) -> set[str]:
        """Run ids whose lease has not expired (by the store's clock)."""
        now = self.writer.clock()
        return {e.lease.run_id for e in models(self.writer.index.leased_data(now, decoded=False))
                if e.lease is not None and e.lease.expires_at > now}
