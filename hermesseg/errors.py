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


class Cancelled(HermesError):
    """The run was cancelled by a signal; nothing was written."""

    exit_code = 130
