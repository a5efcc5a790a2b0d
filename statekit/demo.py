"""A short scripted walk of one episode through the ``archive`` pipeline.

It exercises the real store the way workers do: leased stage runs with
checkpoints and costs, a failure that is classified and retried, a worker
that dies and is recovered, a refused illegal move and a refused stale
write. ``walk`` yields one line per step; the CLI prints them.
"""

from __future__ import annotations

import os
import time
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

    # a worker asks what is next, and runs the stage under a lease
    assert [e.key for e in store.next("downloading")] == [ep.key]
    with store.run(SHOW, EPISODE, "downloading", owner="downloader-1") as run:
        run.checkpoint({"path": "audio/hy0-2004-04-14.mp3", "bytes": 41_300_000}, cost=0.002)
        run.message = "fetched 41.3 MB from archive.org"
    yield f"  run downloading -> {store.get(SHOW, EPISODE).stage} (checkpoint and cost saved during the run)"

    # a failure is classified, recorded, and sent back for a retry after a backoff
    with store.run(SHOW, EPISODE, "converting", owner="converter-1", reraise=False) as run:
        raise MemoryError("ffmpeg: cannot allocate 2 GB")
    ep = store.get(SHOW, EPISODE)
    due = (ep.due_at - store.clock()).total_seconds() if ep.due_at else 0
    yield f"  run converting failed [{run.kind}]: {ep.stage}, retry due in {due:.0f} s"
    yield f"    {ep.message}"
    store.retry_now(SHOW, EPISODE, by="demo", note="no need to wait in a demo")
    with store.run(SHOW, EPISODE, "converting", owner="converter-1") as run:
        run.cost(0.01, note="transcode")
    yield f"  retried converting -> {store.get(SHOW, EPISODE).stage}"

    ep = store.get(SHOW, EPISODE)
    try:
        store.advance(SHOW, EPISODE, "published")
    except InvalidTransitionError as exc:
        yield f"  refused: {exc.one_line()}"
    try:
        store.advance(SHOW, EPISODE, "uploading", expected_version=ep.version - 1)
    except VersionConflictError as exc:
        yield f"  refused: {exc.one_line()}"

    # a worker dies inside its run: its lease runs out and recover() brings the episode back
    store.run(SHOW, EPISODE, "uploading", owner="uploader-7", lease_seconds=0.3).__enter__()
    yield "  uploader-7 started uploading and died (its lease: 0.3 s)"
    time.sleep(0.35)
    report = store.recover()
    yield f"  recover: {report.recovered[0]['episode']} back in {store.get(SHOW, EPISODE).stage}, ready again"
    with store.run(SHOW, EPISODE, "uploading", owner="uploader-8") as run:
        run.cost(0.05, note="video id dQw4w9WgXcQ")
    for stage in ("scheduled", "published"):
        before = store.get(SHOW, EPISODE)
        ep = store.advance(SHOW, EPISODE, stage, expected_version=before.version)
        yield f"  {before.stage:>11} -> {ep.stage:<11} version {ep.version}"
    events = store.events(SHOW, EPISODE)
    yield (f"{ep.key}: {ep.stage}, version {ep.version}, {len(events)} events, cost {ep.cost_total}, "
           f"{len(ep.error_history)} errors recorded, {len(store.backups(SHOW, EPISODE))} backups kept")
    yield f"look at it: statekit --root {store.root} show {ep.key}"
