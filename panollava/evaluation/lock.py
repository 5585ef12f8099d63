"""One evaluation per output folder at a time: an OS lock on ``OUTPUT/.eval.lock``.

Why ``fcntl.flock`` (and not a pid file checked for liveness): the kernel releases the lock when the process that
holds it exits, however it exits (SIGKILL, OOM killer, a node reboot closes its NFS state), so a killed run never
blocks the next one, and there is no pid to check on another host, where it would mean nothing. The file itself
stays (deleting a lock file while another process waits on it would let two processes hold "the" lock); its
content names the holder (pid, host, start time, command) for the refusal message only.

On NFS (v4, or v3 with ``lockd``) Linux implements ``flock`` with POSIX byte-range locks, which the server
arbitrates between nodes; a filesystem without working locks (some FUSE mounts) raises ``ENOLCK``/``EOPNOTSUPP``,
reported as an error that names the folder rather than ignored.

Multi-rank runs: rank 0 takes the lock before it reads or writes the evaluation state and holds it until the run
ends; the other ranks never take it (they write only their own shard).

Light module: no torch.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError, PanoLLaVAError

logger = logging.getLogger(__name__)

LOCK_FILE = ".eval.lock"


class OutputBusyError(PanoLLaVAError, RuntimeError):
    """Another evaluation is running in the same output folder."""


class OutputLock:
    """An exclusive, non-blocking lock on an output folder (see the module docstring).

    Args:
        output_dir: The output folder (created).
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock or refuses at once.

        Raises:
            OutputBusyError: another process holds it (the message names the folder, pid, host and command).
            InvalidInputError: the folder cannot be created, or its filesystem has no working locks.
        """
        if self._fd is not None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(self._busy_message()) from None
            raise InvalidInputError(
                f"cannot lock '{self.path}' ({exc.strerror or exc}): the filesystem of --output_dir has no working "
                "file locks, so two evaluations could mix their results there. Use an --output_dir on a local disk "
                "or on NFS with locking enabled."
            ) from None
        holder = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def _busy_message(self) -> str:
        holder = read_holder(self.path)
        who = (f"process {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started_at')}"
               f" ({holder.get('command')})") if holder else "another process"
        return (
            f"'{self.output_dir}' is in use by another evaluation: {who} holds '{self.path}'. Two evaluations in one "
            "folder would mix their captions. Wait for it to finish (or stop it), or pass another --output_dir."
        )

    def release(self) -> None:
        """Releases the lock (the file stays; see the module docstring)."""
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def refuse_if_busy(output_dir: str | os.PathLike[str]) -> None:
    """Refuses at once, before the model is loaded, when another evaluation holds ``output_dir``.

    Only the process that will be global rank 0 asks (``RANK``, ``SLURM_PROCID``, ``NODE_RANK`` and ``LOCAL_RANK``
    absent or 0): the other ranks would see their own rank 0's lock. A folder that does not exist is free (and is
    not created here). The lock itself is taken later, in the evaluation writer's setup, and held for the run.

    Raises:
        OutputBusyError: another process holds the folder.
    """
    if any(os.environ.get(k, "0") not in ("", "0") for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")):
        return
    if not (Path(output_dir) / LOCK_FILE).is_file():
        return
    lock = OutputLock(output_dir)
    try:
        lock.acquire()
    except InvalidInputError:
        return  # no working locks there: the writer's setup reports it
    lock.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    """What the lock file says about its holder (None when empty or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
