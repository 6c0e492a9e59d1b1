"""Errors the engine reports to people: each carries a message that says what is wrong and what to do."""


class HermesError(Exception):
    """Base class for expected, user-facing failures (bad input, bad files). The CLI prints them without a traceback."""

    exit_code = 2


class ModelFileError(HermesError):
    """A model file is missing, truncated, or its manifest or tensors do not match."""


class CheckpointError(HermesError):
    """An official checkpoint cannot be imported."""


class InputImageError(HermesError):
    """An input image cannot be used (unreadable, wrong dimension, empty, ambiguous DICOM folder...)."""


class QueryError(HermesError):
    """Unknown task, group or modality, or a task the model never learned for a modality."""


class DatasetError(HermesError):
    """A training dataset folder is malformed."""


class OutputError(HermesError):
    """An output location cannot be written."""


def os_error_message(error: OSError) -> str:
    """One line for an operating-system failure (full disk, permission, missing folder): reason and path."""
    reason = error.strerror or str(error) or type(error).__name__
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    return f"{reason}: {' -> '.join(map(str, paths))}" if paths else reason


class Cancelled(HermesError):
    """The run was cancelled by a signal; nothing was written."""

    exit_code = 130


class TaskPackError(HermesError):
    """A task pack is corrupt, made for another base model, or cannot be added to this one."""
