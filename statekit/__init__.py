"""statekit: durable, human-editable state for multi-stage media pipelines.

Files are the truth; the index is a cache. See ``Store``.
"""

from .errors import (
    ApprovalRequiredError,
    CorruptFileError,
    EpisodeExistsError,
    EpisodeNotFoundError,
    IndexUnavailableError,
    InvalidIdError,
    InvalidTransitionError,
    LockTimeoutError,
    PipelineError,
    SchemaVersionError,
    ShowNotFoundError,
    StatekitError,
    StorageError,
    StoreExistsError,
    StoreNotFoundError,
    UnknownStageError,
    UnsafePathError,
    ValidationError,
    VersionConflictError,
)
from .models import Episode, Event, Show
from .pipeline import Pipeline

__version__ = "0.1.0"

_LAZY = {"Store", "ImportReport", "MigrationReport"}


def __getattr__(name: str) -> object:
    # The store pulls in the YAML, lock and database libraries; importing
    # statekit.models or statekit.pipeline alone stays pure.
    if name in _LAZY:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'statekit' has no attribute {name!r}")

__all__ = [
    "ApprovalRequiredError",
    "CorruptFileError",
    "Episode",
    "EpisodeExistsError",
    "EpisodeNotFoundError",
    "Event",
    "ImportReport",
    "IndexUnavailableError",
    "InvalidIdError",
    "InvalidTransitionError",
    "LockTimeoutError",
    "MigrationReport",
    "Pipeline",
    "PipelineError",
    "SchemaVersionError",
    "Show",
    "ShowNotFoundError",
    "StatekitError",
    "StorageError",
    "Store",
    "StoreExistsError",
    "StoreNotFoundError",
    "UnknownStageError",
    "UnsafePathError",
    "ValidationError",
    "VersionConflictError",
    "__version__",
]
