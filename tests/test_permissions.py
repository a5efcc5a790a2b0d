"""Files statekit writes get the mode any program's new file gets (0666 minus
the umask), so a store shared by a team's accounts stays writable for the
group when their umask allows it. Checked in a fresh process per umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

WRITE_EVERYTHING = """
import os, sys
mask = int(sys.argv[2], 8)
os.umask(mask)
from pathlib import Path
from statekit import Store
from statekit.cache import cache_key, VALUE_FILE_MIN
from statekit.report import write_report

root = sys.argv[1]
store = Store.init(root)
store.create_show("s", title="A show")
store.create("s", "e", title="one")
store.advance("s", "e", "downloading", cost=0.5)
store.advance("s", "e", "downloaded")  # replaces the file twice: backups
store.save_checkpoint("s", "e", "downloaded", {"part": 1})
store.add_asset("s", "e", b"RIFF" + bytes(5000), kind="audio", name="take.wav")
store.create("s", "gone")
store.delete("s", "gone")  # the trash
try:
    with store.run("s", "e", "converting"):
        raise ConnectionResetError(104, "reset")  # errors.jsonl
except ConnectionResetError:
    pass
store.cache.set(cache_key({"tts": "hello"}), bytes(VALUE_FILE_MIN + 1), kind="tts")
write_report(store, os.path.join(root, "report.html"))
store.close()
"""

# SQLite makes its own files (0644 less the umask); statekit does not write them
SQLITE = (".db", ".db-wal", ".db-shm", ".db-journal")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_and_folders_get_the_modes_the_umask_allows(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "store"
    subprocess.run([sys.executable, "-c", WRITE_EVERYTHING, str(root), oct(umask)], check=True)
    files, folders = {}, {}
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            folders[os.path.relpath(os.path.join(folder, name), root)] = stat.S_IMODE(
                os.lstat(os.path.join(folder, name)).st_mode)
        for name in names:
            if not name.endswith(SQLITE):
                files[os.path.relpath(os.path.join(folder, name), root)] = stat.S_IMODE(
                    os.lstat(os.path.join(folder, name)).st_mode)
    kinds = {"statekit.yaml", "shows/s/show.yaml", "shows/s/episodes/e/episode.yaml",
             "shows/s/episodes/e/events.jsonl", "shows/s/episodes/e/checkpoints/downloaded.json",
             "shows/s/episodes/e/assets/take.wav", ".statekit/errors.jsonl", "report.html"}
    assert kinds <= set(files), sorted(files)
    for part in ("objects/", ".statekit/backups/episodes/s/e/episode.v", ".statekit/trash/s/gone.",
                 ".statekit/locks/episodes/s/e.lock", ".statekit/cache/blobs/", ".statekit/.gitignore"):
        assert any(f.startswith(part) for f in files), (part, sorted(files))
    assert any(f.startswith("objects/") and f.endswith(".json") for f in files)  # an asset's sidecar
    wrong = {f: oct(m) for f, m in files.items() if m != 0o666 & ~umask}
    assert not wrong, json.dumps(wrong, indent=1)
    wrong = {d: oct(m) for d, m in folders.items() if m != 0o777 & ~umask}
    assert not wrong, json.dumps(wrong, indent=1)
