"""Id validation: the one check every show, episode and stage name passes
before it is used to build a path. Pure; no I/O."""

from __future__ import annotations

import re

from .errors import InvalidIdError

ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")

# Device names that Windows and SMB shares refuse as file names, so a store
# copied there with rsync keeps working ("aux.v2" is reserved too).
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


VALID_IDS: set[str] = set()
"""Ids found valid (a store's stage names and show ids come back in every file:
a set lookup instead of two regular expressions); emptied when it grows past
``VALID_IDS_MAX``. Only ``str`` itself is looked up (a subclass may hash or
compare differently)."""
VALID_IDS_MAX = 1 << 16


def check_id(value: object, kind: str = "id") -> str:
    """Return ``value`` if it is a valid id, else raise ``InvalidIdError``.

    ``re.fullmatch`` (not ``match``): a trailing newline is not allowed.
    """
    if type(value) is str and value in VALID_IDS:
        return value
    if type(value) is str and ID_PATTERN.fullmatch(value):
        if _RESERVED.fullmatch(value):
            raise InvalidIdError(f"invalid {kind} {_shown(value)}: it is a reserved device name on Windows")
        if len(VALID_IDS) >= VALID_IDS_MAX:
            VALID_IDS.clear()
        VALID_IDS.add(value)
        return value
    if not isinstance(value, str):
        raise InvalidIdError(f"invalid {kind} {_shown(value)}: expected a string, got {type(value).__name__}")
    if not value:
        raise InvalidIdError(f"invalid {kind}: it is empty")
    if len(value) > 128:
        raise InvalidIdError(f"invalid {kind} {_shown(value)}: {len(value)} characters, at most 128 are allowed")
    raise InvalidIdError(f"invalid {kind} {_shown(value)}")
