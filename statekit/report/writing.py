"""Writing a report file: build the report, render it, write it atomically
through the file primitives."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .. import files as diskio
from .compute import build_report
from .rendering import check_format, render

if TYPE_CHECKING:
    from ..store import Store


def write_report(store: Store, path: str | os.PathLike[str], fmt: str = "html", **kw: Any) -> str:
    """Build the report (``kw`` as for ``build_report``) and write it to
    ``path`` atomically and durably (mode 0666 less the umask); returns the path."""
    fmt = check_format(fmt)
    target = os.path.abspath(os.fspath(path))
    text = render(build_report(store, **kw), fmt)
    diskio.atomic_write(diskio.DISK, target, text.encode("utf-8"))
    return target
