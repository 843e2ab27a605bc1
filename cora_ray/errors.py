"""The project's small exception hierarchy: messages a user can act on (which file, row, field, limit)."""

from __future__ import annotations


class CoraError(Exception):
    """Base class of every error cora_ray raises on purpose."""


class ConfigError(CoraError):
    """A config file or override is wrong: unknown key, wrong type, value out of range."""


class StorageError(CoraError):
    """A URI cannot be read or written, or a directory is incomplete (no manifest)."""


class DataError(CoraError):
    """Input data is malformed: missing file, column, bad value, empty result."""


class ArtifactMismatchError(CoraError):
    """An artifact (CF model, checkpoint) was made for other data or another base model."""


class ModelError(CoraError):
    """A model cannot be built as configured (wrong target module, missing answer token, ...)."""


class TrainingError(CoraError):
    """Training cannot go on (NaN loss, empty split, ...)."""
