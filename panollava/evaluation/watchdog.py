"""The last line of defence of a multi-rank evaluation: a rank that failed never leaves the others waiting.

The normal path needs no watchdog: a failure inside a batch, in a shard write, in rank 0's merge, scoring or final
write is kept and reported to every rank in the next collective (``EvaluationWriter``), and every rank exits with
the failing rank's message. What that path cannot catch is a rank that ends by an exception *outside* those steps
while the others already sit in a collective (under NCCL they would wait for the process-group timeout, 4 hours
here). So every rank that ends by an exception leaves a marker, ``OUTPUT/shards/<attempt>-rank<R>.failed`` (JSON:
rank, host, pid, message), in the output folder every rank shares, and every rank runs a thread that looks for the
markers of its attempt once a second. A rank that is still alive :data:`GRACE_S` seconds after another rank's
marker appeared prints that rank's message and exits (status 2) with ``os._exit``, which needs no collective. The
grace leaves the normal path time to end the rank cleanly first. A rank killed outright (SIGKILL, OOM killer) is
the launcher's to catch (``torchrun``, ``srun``, Lightning's child-process observer).

Light module: no torch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from panollava.evaluation.state import SHARD_DIR

logger = logging.getLogger(__name__)

GRACE_S = 15.0
"""Seconds a rank may take to end by itself after another rank's failure marker appeared."""
POLL_S = 1.0


def marker_path(output_dir: Path, attempt: str, rank: int) -> Path:
    return output_dir / SHARD_DIR / f"{attempt}-rank{rank}.failed"


def write_marker(output_dir: Path, attempt: str, rank: int, message: str) -> None:
    """Leaves this rank's failure marker (best effort: a failure to write it is logged, never raised)."""
    path = marker_path(output_dir, attempt, rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
                                   "message": message}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not leave the failure marker '%s': %s", path, exc)


class FailureWatchdog:
    """Watches for other ranks' failure markers (see the module docstring).

    Args:
        output_dir: The shared output folder.
        attempt: The attempt id.
        rank: This process's global rank.
        grace_s: Seconds to wait for the normal path before exiting.
    """

    def __init__(self, output_dir: Path, attempt: str, rank: int, grace_s: float = GRACE_S) -> None:
        self.output_dir = Path(output_dir)
        self.attempt = attempt
        self.rank = rank
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="panollava-failure-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _others(self) -> list[dict]:
        found = []
        for path in (self.output_dir / SHARD_DIR).glob(f"{self.attempt}-rank*.failed"):
            if path.name == marker_path(self.output_dir, self.attempt, self.rank).name:
                continue
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda m: m.get("rank", 0))

    def _run(self) -> None:
        seen_at: float | None = None
        while not self._stop.wait(POLL_S):
            others = self._others()
            if not others:
                continue
            seen_at = seen_at or time.monotonic()
            if time.monotonic() - seen_at < self.grace_s:
                continue
            first = others[0]
            message = (f"rank {first.get('rank')} (host {first.get('host')}, pid {first.get('pid')}) failed: "
                       f"{first.get('message')}; rank {self.rank} ends too")
            logger.error("%s", message)
            for handler in logging.getLogger("panollava").handlers:
                handler.flush()
            os._exit(2)
