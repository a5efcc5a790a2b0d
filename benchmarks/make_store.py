"""Generate a large, valid statekit store straight to files (no fsync, no index).

    python benchmarks/make_store.py DIR [--episodes 100000] [--shows 100] [--events 5]

Every episode is a real ``archive`` episode file with ``--events`` events in
its log, chained as statekit writes it (``--no-ledger``: the unchained log of a
store before the ledger), so ``statekit verify`` passes on the result. For benchmarks and demos that need more than the sample data.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit import (
    Store,  # noqa: E402
    patches,  # noqa: E402
)
from statekit.codecs import JSON_CODEC, YAML_CODEC, compact_json  # noqa: E402
from statekit.graphs import graph_hash  # noqa: E402
from statekit.models import Episode, Show  # noqa: E402

PATH = ["discovered", "downloading", "downloaded", "converting", "converted", "uploading", "uploaded",
        "scheduled", "published"]


def episode_files(show: str, ep: str, n_events: int, rng: random.Random, start: datetime,
                  fmt: str = "yaml", graph: str | None = None) -> tuple[bytes, bytes]:
    """(episode.yaml or .json bytes, events.jsonl bytes) for one episode with n_events events.
    ``graph`` (a ledger store, the default): the log is chained as statekit writes it (schema 2:
    the create's whole data as ``doc``, then each version's ``patch`` and ``prev``, the file's
    hash on every line, the graph's hash); None: the unchained log of a store before the ledger."""
    moves = [PATH[min(i, len(PATH) - 1)] for i in range(n_events)]
    times = [start + timedelta(minutes=7 * i + rng.random()) for i in range(n_events)]
    costs: dict[str, float] = {}
    attempts: dict[str, int] = {}
    metadata = {"archive_identifier": f"hy0_{show}_{ep}", "date": start.date().isoformat(),
                "tags": ["archive", "radio", show], "duration_s": round(rng.uniform(900, 3600), 1)}
    files = {"source_url": f"https://archive.org/download/hy0_{show}_{ep}/{ep}.mp3",
             "audio_file": f"downloads/{show}/{ep}.mp3"}
    codec = YAML_CODEC if fmt == "yaml" else JSON_CODEC
    lines: list[bytes] = []
    data: dict = {}
    raw = b""
    for version, (stage, at) in enumerate(zip(moves, times), 1):
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event: dict = {"schema_version": 2 if graph else 1, "version": version, "at": stamp,
                       "show_id": show, "episode_id": ep}
        if graph:
            event["graph"] = graph
        if version == 1:
            event.update(kind="create", to_stage=stage)
        else:
            cost = round(rng.random() * 0.05, 4)
            costs[moves[version - 2]] = round(costs.get(moves[version - 2], 0.0) + cost, 9)
            event.update(kind="advance", from_stage=moves[version - 2], to_stage=stage, cost=cost,
                         stage=moves[version - 2])
        attempts[stage] = attempts.get(stage, 0) + 1
        model = Episode(
            show_id=show, episode_id=ep, title=f"Hooting Yard On The Air, episode {ep}", stage=stage,
            previous_stage=moves[version - 2] if version > 1 else None, version=version, created_at=times[0],
            updated_at=at, stage_entered_at=at, costs=dict(costs), attempts=dict(attempts),
            message="ok" if version == n_events else None, metadata=metadata, files=files,
        )
        before, data = data, model.model_dump(mode="json")
        raw = codec.dump_plain(data)
        if graph or version == n_events:
            event["sha256"] = hashlib.sha256(raw).hexdigest()
        if graph and version == 1:
            event["doc"] = data
        elif graph:
            event["prev"] = hashlib.sha256(lines[-1][:-1]).hexdigest()
            event["patch"] = patches.diff(before, data)
        lines.append(compact_json(event) + b"\n")
    return raw, b"".join(lines)


def make_store(root: str, episodes: int, shows: int = 100, events: int = 5, seed: int = 7,
               fmt: str = "yaml", ledger: bool = True) -> Store:
    store = Store.init(root, format=fmt, ledger=ledger)
    graph = graph_hash(store.pipeline) if ledger else None
    store.close()
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    per_show = max(1, episodes // shows)
    made = 0
    show_index = 0
    while made < episodes:
        show = f"show{show_index:04d}"
        show_index += 1
        ids = [f"ep{i:06d}" for i in range(min(per_show, episodes - made))]
        base = Path(store.root, "shows", show)
        (base / "episodes").mkdir(parents=True)
        for ep in ids:
            folder = base / "episodes" / ep
            folder.mkdir()
            raw, log = episode_files(show, ep, events, rng, start + timedelta(hours=made), fmt, graph)
            (folder / f"episode.{fmt}").write_bytes(raw)
            (folder / "events.jsonl").write_bytes(log)
            made += 1
        # show.yaml orders nothing by hand: the episodes follow creation (their created_at rises with i)
        blueprint = Show(show_id=show, title=f"Show {show_index}", created_at=start, updated_at=start)
        (base / "show.yaml").write_bytes(YAML_CODEC.dump_plain(blueprint.file_data()))
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--shows", type=int, default=100)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
    parser.add_argument("--no-ledger", action="store_true", help="a store before the ledger (unchained logs)")
    args = parser.parse_args()
    if os.path.exists(os.path.join(args.dir, "statekit.yaml")):
        sys.exit(f"{args.dir} already holds a store")
    make_store(args.dir, args.episodes, args.shows, args.events, fmt=args.format, ledger=not args.no_ledger)
    print(f"made {args.episodes} episodes in {args.dir}")


if __name__ == "__main__":
    main()
