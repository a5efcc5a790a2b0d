"""Log lines: one readable line (the default) or one JSON object per line.

``--log-format json`` (or ``STATEKIT_LOG_FORMAT=json``) formats statekit's
log records with python-json-logger: the message, level, logger and time,
and the context statekit attaches to a record (``show_id``, ``episode_id``,
``stage``, ``run_id``, ``kind``... see ``taxonomy.log_fields``) as fields.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ValidationError
from .alerts import needs

FORMATS = ("text", "json")
ENV = "STATEKIT_LOG_FORMAT"


def chosen(given: str | None) -> str:
    """The log format: the option, else ``$STATEKIT_LOG_FORMAT``, else text."""
    value = (given or os.environ.get(ENV) or "text").strip().lower()
    if value not in FORMATS:
        raise ValidationError(f"log format {value!r} is not one of {', '.join(FORMATS)} "
                              f"(--log-format or ${ENV})", field="log_format")
    return value


def json_formatter() -> logging.Formatter:
    """One JSON object per record, with the record's extra fields."""
    module = needs("pythonjsonlogger.json", "logs")
    formatter: Any = module.JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False, json_ensure_ascii=False)
    return formatter  # type: ignore[no-any-return]
