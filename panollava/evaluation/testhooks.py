"""Pause points for tests that interrupt a run: the run waits at a named point until the test lets it go.

A test that sends a signal "after the first record" must not race the run (a fast run may finish first). With

    PANOLLAVA_TEST_PAUSE=flushed PANOLLAVA_TEST_PAUSE_DIR=/tmp/x panollava-cli test ...

the run creates ``/tmp/x/flushed.reached`` when it reaches the point and then waits until ``/tmp/x/flushed.go``
exists (or a stop signal arrives, see :mod:`panollava.evaluation.interrupt`). The test waits for the ``.reached``
file, does what it tests (signal, kill), and the signal always lands mid-run. Points (each pauses once per
process):

* ``flushed`` — after a rank's first batch of records is in its shard (the writer);
* ``mid_batch`` — at the first decode step after that (inside a batch: ``interrupt.check``);
* ``rewrite`` — rank 0's final write, after ``predictions.jsonl`` was replaced and before ``metrics.json`` is
  written (the outputs are being rewritten).

Without the variable nothing happens (one module-level boolean is read).

Light module: no torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

_POINTS = frozenset(p for p in os.environ.get("PANOLLAVA_TEST_PAUSE", "").split(",") if p)
ACTIVE = bool(_POINTS)
"""Whether any pause point is set (read once at import)."""

_passed: set[str] = set()
_flushed = False


def note_flushed() -> None:
    """The writer's first batch of records is durable (enables ``mid_batch``)."""
    global _flushed
    _flushed = True


def pause(point: str, stop_requested: Callable[[], object] = lambda: None) -> None:
    """Waits at ``point`` if the test asked for it (see the module docstring); returns at once otherwise.

    Args:
        point: The pause point.
        stop_requested: Returns something (not None) once a stop was requested (a signal): the wait ends then.
    """
    if point not in _POINTS or point in _passed or (point == "mid_batch" and not _flushed):
        return
    _passed.add(point)
    folder = Path(os.environ.get("PANOLLAVA_TEST_PAUSE_DIR", "."))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{point}.{os.getpid()}.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, folder / f"{point}.reached")
    go = folder / f"{point}.go"
    while not go.exists() and stop_requested() is None:
        time.sleep(0.01)  # the run waits for the test (not the other way round)
