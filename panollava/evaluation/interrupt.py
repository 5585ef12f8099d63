"""Stopping an evaluation on SIGTERM as promptly as on Ctrl-C, and the stop check the decode loop calls.

Schedulers (SLURM, Kubernetes) send SIGTERM some time before SIGKILL. Lightning's own SIGTERM handler only records
the signal and the evaluation loop went on generating; here the evaluation writer installs :func:`install` once the
run starts (after Lightning registered its handlers, which it restores at teardown):

* outside a batch (loading, merging, scoring), the handler raises :class:`EvaluationInterrupted` at once;
* inside a batch (between :func:`enter_batch` and :func:`leave_batch`) it only records the signal, and the batch
  stops at the next :func:`check`: the decode loop calls it once per generated token
  (``panollava/generation/decode.py``), so the stop comes within one decode step; :func:`leave_batch` checks too;
* a second SIGTERM raises at once wherever it lands.

:class:`EvaluationInterrupted` is a ``KeyboardInterrupt``, so Lightning treats it as Ctrl-C (the callbacks'
``on_exception``, teardown, exit status 1): the finished samples are in the shards and the message says how to
resume.

Light module: no torch.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from panollava.evaluation import testhooks

logger = logging.getLogger(__name__)

_requested: str | None = None
_in_batch = False


class EvaluationInterrupted(KeyboardInterrupt):
    """The evaluation was stopped by a signal (SIGTERM); handled like Ctrl-C.

    Args:
        signal_name: ``"SIGTERM"``.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def requested() -> str | None:
    """The name of the stop signal received (None: none)."""
    return _requested


def check() -> None:
    """Raises :class:`EvaluationInterrupted` if a stop signal arrived. Cheap (one global read): call it per step.

    Raises:
        EvaluationInterrupted: SIGTERM was received.
    """
    if testhooks.ACTIVE:
        testhooks.pause("mid_batch", requested)
    if _requested is not None:
        raise EvaluationInterrupted(_requested)


def enter_batch() -> None:
    """From here until :func:`leave_batch`, a SIGTERM waits for the next :func:`check`."""
    global _in_batch
    _in_batch = True


def leave_batch() -> None:
    """Ends the batch region; raises if a stop signal arrived during the batch."""
    global _in_batch
    _in_batch = False
    check()


def _handler(signum: int, frame: Any) -> None:
    global _requested
    name = signal.Signals(signum).name
    first = _requested is None
    _requested = name
    if first and _in_batch:
        logger.warning("received %s: stopping after the current decode step", name)
        return
    raise EvaluationInterrupted(name)


def install() -> Any:
    """Installs the SIGTERM handler (main thread only); returns the previous handler for :func:`uninstall`."""
    global _requested, _in_batch
    _requested, _in_batch = None, False
    try:
        return signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def uninstall(previous: Any) -> None:
    """Restores the handler :func:`install` replaced."""
    global _in_batch
    _in_batch = False
    if previous is not None and signal.getsignal(signal.SIGTERM) is _handler:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass
