"""User-facing error types.

Library code raises these; ``panollava.cli`` turns them into a short message and a non-zero exit code (the
traceback only with ``--verbose``). A message says what was expected, what was found, where (absolute path, CSV
row, metadata key) and how to fix it. Each class also derives from the matching built-in exception, so callers
can catch ``FileNotFoundError`` or ``ValueError`` as usual.
"""


class PanoLLaVAError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class InputNotFoundError(PanoLLaVAError, FileNotFoundError):
    """A file or directory the user pointed at does not exist or holds nothing usable."""


class InvalidInputError(PanoLLaVAError, ValueError):
    """An input exists but is malformed: a bad flag value, CSV, metadata file or image."""


class ModelUnavailableError(PanoLLaVAError, OSError):
    """A model name is neither a local folder nor available in the offline Hugging Face cache."""
