"""A short scripted walk of one episode through the ``archive`` pipeline.

It exercises the real store: a checkpoint, a refused illegal move, a failure
and retry, costs, and a compare-and-set write. ``walk`` yields one line per
step; the CLI prints them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .errors import InvalidTransitionError, VersionConflictError
from .store import Store

SHOW, EPISODE = "hooting-yard", "hy0-2004-04-14"


def walk(root: str | os.PathLike[str]) -> Iterator[str]:
    store = Store.init(root, pipeline="archive")
    yield f"store created at {store.root} (pipeline archive, format yaml)"
    ep = store.create(SHOW, EPISODE, title="Hooting Yard, 14 April 2004",
                      metadata={"archive_identifier": "hy0_hooting_yard_2004-04-14"})
    yield f"created {ep.key} at {ep.stage!r} (version {ep.version})"

    def move(stage: str, **kw: object) -> None:
        nonlocal ep
        before = ep.stage
        ep = store.advance(SHOW, EPISODE, stage, expected_version=ep.version, **kw)  # type: ignore[arg-type]
        cost = f", cost {kw['cost']}" if kw.get("cost") else ""
        note = f" - {kw['message']}" if kw.get("message") else ""
        lines.append(f"  {before:>11} -> {ep.stage:<11} version {ep.version}{cost}{note}")

    lines: list[str] = []
    move("downloading")
    move("downloaded", cost=0.002, message="fetched 41.3 MB from archive.org")
    ep = store.save_checkpoint(SHOW, EPISODE, "downloaded", {"path": "audio/hy0-2004-04-14.mp3", "bytes": 41_300_000})
    lines.append(f"  checkpoint 'downloaded' saved (version {ep.version})")
    move("converting")
    move("failed", message="ffmpeg exited 1: out of memory")
    move("converting", message="retry")
    move("converted", cost=0.01)
    yield from lines
    lines.clear()

    try:
        store.advance(SHOW, EPISODE, "published")
    except InvalidTransitionError as exc:
        yield f"  refused: {exc.one_line()}"
    try:
        store.advance(SHOW, EPISODE, "uploading", expected_version=ep.version - 1)
    except VersionConflictError as exc:
        yield f"  refused: {exc.one_line()}"

    move("uploading")
    move("uploaded", cost=0.05, message="video id dQw4w9WgXcQ")
    move("scheduled")
    move("published")
    yield from lines
    events = store.events(SHOW, EPISODE)
    yield (f"{ep.key}: {ep.stage}, version {ep.version}, {len(events)} events, cost {ep.cost_total}, "
           f"resume point {store.resume_stage(SHOW, EPISODE)!r}")
    yield f"look at it: statekit --root {store.root} show {ep.key}"
