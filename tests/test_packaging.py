"""What a wheel holds. The suite runs an editable install, which imports every module from
the checkout; a wheel holds only the packages and files ``pyproject.toml`` names, so a
folder missing from that list works in every test and fails once installed (statekit.cache
was left out so: ``statekit cache stats`` could not import it)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def folder_of(package: str) -> Path:
    """Where a listed package's files are, by ``package-dir`` or by its dotted name."""
    for name, where in SETUPTOOLS.get("package-dir", {}).items():
        if package == name or package.startswith(name + "."):
            return REPO / where / package[len(name):].lstrip(".").replace(".", "/")
    return REPO / package.replace(".", "/")


def shipped_folders() -> set[Path]:
    """Every folder a wheel must hold: the package and each folder inside it, and the migrations."""
    found: set[Path] = set()
    for top in (REPO / "statekit", REPO / "migrations"):
        found |= {top} | {p for p in top.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    return found


def data_files(package: str) -> list[str]:
    """The files of one listed package that are not Python modules."""
    folder = folder_of(package)
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc"))


def test_every_folder_of_the_package_is_listed() -> None:
    listed = {folder_of(p) for p in SETUPTOOLS["packages"]}
    assert sorted(str(p.relative_to(REPO)) for p in shipped_folders() - listed) == []
    assert sorted(str(p.relative_to(REPO)) for p in listed - shipped_folders()) == []


def test_every_data_file_is_shipped() -> None:
    data = SETUPTOOLS.get("package-data", {})
    missing = [f"{package}: {name}" for package in SETUPTOOLS["packages"] for name in data_files(package)
               if not any(fnmatch.fnmatch(name, pattern) for pattern in data.get(package, []))]
    assert missing == []


def test_the_check_sees_a_missing_folder(tmp_path: Path) -> None:
    """The first test's comparison finds a folder the list leaves out (it did: statekit/cache)."""
    listed = {folder_of(p) for p in SETUPTOOLS["packages"] if p != "statekit.cache"}
    assert shipped_folders() - listed == {REPO / "statekit" / "cache"}
    assert "dashboard.css" in data_files("statekit.dashboard.static")
    assert "script.py.mako" in data_files("statekit._migrations")
