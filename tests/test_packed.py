"""``statekit.packed``: the rules for files kept gzip-compressed (the plain file wins;
gzip files read as zcat reads them; a damaged or oversized one is refused)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from statekit import CorruptFileError
from statekit.files import DISK
from statekit.packed import compress, existing, inflate, read_either


def folder(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_the_plain_file_wins_and_inflate_removes_the_stale_copy(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"new\n")
    (tmp_path / "log.gz").write_bytes(gzip.compress(b"old\n"))
    assert read_either(str(tmp_path / "log")) == b"new\n"
    fd = folder(tmp_path)
    try:
        assert inflate(DISK, str(tmp_path / "log"), dir_fd=fd) is False
        assert sorted(os.listdir(tmp_path)) == ["log"]
        assert compress(DISK, str(tmp_path / "log"), dir_fd=fd) == (4, len(gzip.compress(b"new\n", 9, mtime=0)))
        assert sorted(os.listdir(tmp_path)) == ["log.gz"]
        assert existing(str(tmp_path / "log")) == str(tmp_path / "log.gz")
        assert read_either(str(tmp_path / "log")) == b"new\n"
        assert inflate(DISK, str(tmp_path / "log"), dir_fd=fd) is True
        assert sorted(os.listdir(tmp_path)) == ["log"] and (tmp_path / "log").read_bytes() == b"new\n"
        assert compress(DISK, str(tmp_path / "missing"), dir_fd=fd) is None
    finally:
        os.close(fd)
    assert read_either(str(tmp_path / "missing")) is None


def test_every_member_is_read_as_zcat_reads_it(tmp_path: Path) -> None:
    (tmp_path / "log.gz").write_bytes(gzip.compress(b"one\n") + gzip.compress(b"two\n"))
    assert read_either(str(tmp_path / "log")) == b"one\ntwo\n"


@pytest.mark.parametrize("damage", [lambda b: b[:-5], lambda b: b"not gzip at all", lambda b: b[:10] + b"\0" * 30])
def test_a_damaged_file_is_refused_naming_it(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "log.gz").write_bytes(damage(gzip.compress(b"x" * 1000)))
    with pytest.raises(CorruptFileError, match="log.gz"):
        read_either(str(tmp_path / "log"))


def test_a_file_that_inflates_past_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cp.json.gz").write_bytes(gzip.compress(b"0" * 100_000))
    with pytest.raises(CorruptFileError, match="more than 1000 bytes"):
        read_either(str(tmp_path / "cp.json"), 1000)
    assert read_either(str(tmp_path / "cp.json"), 100_000) == b"0" * 100_000
