"""Where things live under a store's root (paths only: nothing is read or written here).

    shows/<show>/show.yaml
    shows/<show>/episodes/<ep>/episode.yaml|json, events.jsonl, checkpoints/, assets/
    .statekit/backups/episodes/<show>/<ep>/episode.v<version>.<ext>
    .statekit/trash/<show>/...   .statekit/locks/...   .statekit/errors.jsonl
"""

from __future__ import annotations

import os
import re

from .files import TEMP_PREFIX

TRASH = (".statekit", "trash")
BACKUPS = (".statekit", "backups")
EPISODE_BACKUPS = (*BACKUPS, "episodes")
RUN_TEMP = (".statekit", "tmp", "runs")
_BACKUP_NAME = re.compile(r"episode\.v(\d{1,18})\.(yaml|json)")


def episode_parts(show: str, ep: str) -> tuple[str, ...]:
    return ("shows", show, "episodes", ep)


def backup_parts(show: str, ep: str) -> tuple[str, ...]:
    return (*EPISODE_BACKUPS, show, ep)


def trash_parts(show: str) -> tuple[str, ...]:
    return (*TRASH, show)


def show_file(root: str, show: str) -> str:
    return os.path.join(root, "shows", show, "show.yaml")


def backup_versions(names: list[str]) -> list[tuple[int, str]]:
    """(version, name) of each backup file name among ``names``."""
    return [(int(m.group(1)), name) for name in names if (m := _BACKUP_NAME.fullmatch(name))]


class EpisodePaths:
    """Every path of one episode (ids already checked): its folder chain
    (``shows``, the show, ``episodes``, the episode), its file in the store's
    format and the other one, and its event log."""

    __slots__ = ("chain", "dir", "files", "events")

    def __init__(self, root: str, show: str, ep: str, suffix: str) -> None:
        shows = root + "/shows"
        show_dir = f"{shows}/{show}"
        self.chain = (shows, show_dir, show_dir + "/episodes", f"{show_dir}/episodes/{ep}")
        self.dir = self.chain[-1]
        other = ".json" if suffix == ".yaml" else ".yaml"
        self.files = (f"{self.dir}/episode{suffix}", f"{self.dir}/episode{other}")
        self.events = self.dir + "/events.jsonl"

    def checkpoint(self, stage: str) -> str:
        return os.path.join(self.dir, "checkpoints", stage + ".json")


def subdirs(path: str | int) -> list[str]:
    """The real folders (no symlinks) in ``path``, or in the folder held open as ``path``."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def checkpoint_stages(episode_dir: str) -> list[str]:
    """The stages with a checkpoint file in an episode folder."""
    try:
        names = os.listdir(os.path.join(episode_dir, "checkpoints"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stages = (n[:-5] if n.endswith(".json") else n[:-8] for n in names
              if n.endswith((".json", ".json.gz")) and not n.startswith(TEMP_PREFIX))  # .gz: compressed by retention
    return list(dict.fromkeys(stages))
