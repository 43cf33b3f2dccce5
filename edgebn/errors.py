"""The project's exception types. The CLI turns any of them into one stderr line and exit 2."""


class EdgebnError(Exception):
    """Bad input or usage: the message says what was received and what is allowed."""


class InvalidModelError(EdgebnError):
    """A file that cannot be read as the model it claims to be (.tflite or .keras)."""


class DatasetError(EdgebnError):
    """A dataset that is missing, empty, unreadable or has fewer than two classes."""


class RuntimeBackendError(EdgebnError):
    """No usable TFLite interpreter backend, or the one asked for cannot run here."""


class FoldError(EdgebnError):
    """A fold that cannot be trusted: the folded model's outputs differ beyond the tolerance."""
