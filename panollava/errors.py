"""User-facing error types.

Library code raises these; ``panollava.cli`` turns them into a short message and a non-zero exit code (the
traceback only with ``--verbose``). A message says what was expected, what was found, where (absolute path, CSV
row, metadata key) and how to fix it. Each class also derives from the matching built-in exception, so callers
can catch ``FileNotFoundError`` or ``ValueError`` as usual.

Exit codes (``exit_code`` of each class; ``panollava.cli.main`` returns it): 2 for a user error, 3 when results
were written but a metric failed (or was unavailable under ``--strict_metrics``), 130 after an interruption.
"""


class PanoLLaVAError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    #: Exit status of ``panollava-cli`` when this error ends a command.
    exit_code: int = 2


class InputNotFoundError(PanoLLaVAError, FileNotFoundError):
    """A file or directory the user pointed at does not exist or holds nothing usable."""


class InvalidInputError(PanoLLaVAError, ValueError):
    """An input exists but is malformed: a bad flag value, CSV, metadata file or image."""


class ModelUnavailableError(PanoLLaVAError, OSError):
    """A model name is neither a local folder nor available in the offline Hugging Face cache."""


class MetricFailedError(PanoLLaVAError, RuntimeError):
    """A metric raised while being computed (or, in strict mode, could not run here).

    Raised after the predictions and the metrics that could be computed were written, so that the command exits
    non-zero (status 3) without losing them. The message names each metric, its reason and the files written.
    """

    exit_code = 3
