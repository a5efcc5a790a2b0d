"""statekit: durable, human-editable state for multi-stage media pipelines.

Files are the truth; the index is a cache. See ``Store``.
"""

from .errors import (
    APIError,
    ApprovalRequiredError,
    AssetNotFoundError,
    AudioProcessingError,
    CharacterNotFoundError,
    CorruptFileError,
    DuplicateError,
    EpisodeExistsError,
    EpisodeNotFoundError,
    IndexUnavailableError,
    InvalidIdError,
    InvalidTransitionError,
    LeaseExpiredError,
    LockTimeoutError,
    NetworkError,
    NotReadyError,
    PipelineError,
    QueryError,
    QueryTimeoutError,
    ReadOnlyStoreError,
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
    context_of,
)
from .models import AssetRecord, Episode, Event, Show, UploadRecord
from .pipeline import Pipeline
from .taxonomy import ErrorKind, Rule, classify, retry

__version__ = "0.1.0"

_LAZY = {"Store", "ImportReport", "MigrationReport", "RecoverReport", "Run"}


def __getattr__(name: str) -> object:
    # The store pulls in the YAML, lock and database libraries; importing
    # statekit.models or statekit.pipeline alone stays pure.
    if name in _LAZY:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'statekit' has no attribute {name!r}")

__all__ = [
    "APIError",
    "ApprovalRequiredError",
    "AssetNotFoundError",
    "AssetRecord",
    "AudioProcessingError",
    "CharacterNotFoundError",
    "classify",
    "context_of",
    "CorruptFileError",
    "DuplicateError",
    "Episode",
    "EpisodeExistsError",
    "EpisodeNotFoundError",
    "ErrorKind",
    "Event",
    "ImportReport",
    "IndexUnavailableError",
    "InvalidIdError",
    "InvalidTransitionError",
    "LeaseExpiredError",
    "LockTimeoutError",
    "MigrationReport",
    "NetworkError",
    "NotReadyError",
    "Pipeline",
    "RecoverReport",
    "PipelineError",
    "QueryError",
    "QueryTimeoutError",
    "ReadOnlyStoreError",
    "retry",
    "Rule",
    "Run",
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
    "UploadRecord",
    "ValidationError",
    "VersionConflictError",
    "__version__",
]
