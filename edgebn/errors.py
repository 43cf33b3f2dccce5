"""The project's exception types. The CLI turns any of them into one stderr line and exit 2."""


class EdgebnError(Exception):
    """Bad input or usage: the message says what was received and what is allowed.

    ``option`` names the parameter it is about (``"recalibrate_bn"``), when one is: the CLI
    prints the flag's spelling before the message; the library never spells flags.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class InvalidModelError(EdgebnError):
    """A file that cannot be read as the model it claims to be (.tflite or .keras)."""


class DatasetError(EdgebnError):
    """A dataset that is missing, empty, unreadable or has fewer than two classes."""


class RuntimeBackendError(EdgebnError):
    """No usable TFLite interpreter backend, or the one asked for cannot run here."""


class FoldError(EdgebnError):
    """A fold that cannot be trusted: the folded model's outputs differ beyond the tolerance."""
