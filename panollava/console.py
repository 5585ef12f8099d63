"""Console output: user-facing lines (rank 0 only), the log handler, and silencing known third-party noise.

Every module that talks to the user imports from here (``echo``), so that the command modules
(``panollava.cli``, ``panollava.lightning_cli``, ``panollava.commands.*``) never import each other for it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (or not distributed), from the launcher's environment variables."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def echo(line: str = "") -> None:
    """Print a user-facing line (rank 0 only)."""
    if is_rank_zero():
        print(line, flush=True)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a caller such as pytest may swap it after
    the handler was added; a handler holding the old stream would write to a closed file)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure_logging(verbose: bool) -> None:
    """One stderr handler on the ``panollava`` logger (added once): INFO, DEBUG with ``verbose``, WARNING off
    rank 0."""
    root = logging.getLogger("panollava")
    if not any(getattr(h, "_panollava", False) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._panollava = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not is_rank_zero():
        root.setLevel(logging.WARNING)


class _DropAdvert(logging.Filter):
    """Drops Lightning's start-up advertisement for its hosted logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def quiet_third_party() -> None:
    """Silence known, harmless third-party noise (progress bars while loading weights, deprecation notes)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    for pattern in (r".*is_gradient_checkpointing.*", r".*treespec, LeafSpec.*", r".*module\(s\) in eval mode.*",
                    r".*does not have many workers.*", r".*litlogger.*",
                    r".*args parameter is intended to run from within Python.*",
                    # evaluation's IterableDataset gives each DataLoader worker its own batches (panorama_batches.py)
                    r".*Your `IterableDataset` has `__len__` defined.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in target.filters):
            target.addFilter(_DropAdvert())
