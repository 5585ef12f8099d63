"""METEOR 1.5 through pycocoevalcap's jar: one JVM per process, fed in bulk, with a deadline.

pycocoevalcap's ``Meteor`` starts ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`` and talks to it
one line at a time: ``SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis`` returns a line of statistics per
sample, then ``EVAL ||| stats 1 ||| ... ||| stats N`` returns one score per sample and the corpus score.
Loading the paraphrase table takes the JVM 5-6 s, so:

- :func:`get_meteor` keeps one process for the whole Python process (``prestart_meteor`` starts it early,
  before the input is even read), and later scorings reuse it;
- :meth:`MeteorProcess.score` sends the same lines, but all at once from a writer thread, and reads the
  answers in large chunks (fewer wake-ups, so the thread barely competes for the GIL with the BLEU/CIDEr code
  running meanwhile);
- a deadline covers everything: past it the process is killed and :class:`MeteorTimeout` says so.

The lines sent are byte-for-byte those of ``pycocoevalcap.meteor.meteor.Meteor`` (same escaping of ``|||`` and
double spaces in the hypothesis), so the scores are the same. The only addition to its command line are two
JVM options that make the JVM cheaper on a small shared machine (:data:`METEOR_JVM_OPTIONS`).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "METEOR_JAR",
    "MeteorError",
    "MeteorProcess",
    "MeteorTimeout",
    "close_meteor",
    "get_meteor",
    "meteor_command",
    "meteor_dir",
    "prestart_meteor",
]

METEOR_JAR = "meteor-1.5.jar"
# JVM options added to pycocoevalcap's command: none by default. On an idle 2-core machine pycocoevalcap's own
# command was fastest (panollava-cli score on the 1,119 QuIC-360 test groups: 7.8-8.1 s wall, against 9.3-9.6 s with
# "-XX:+UseSerialGC -XX:TieredStopAtLevel=1", which saves ~15% CPU and helps only on a machine that is already
# busy). METEOR's output does not depend on them (the parity tests compare every score).
# ``PANOLLAVA_METEOR_JVM_OPTIONS`` (space-separated) adds options.
METEOR_JVM_OPTIONS: tuple[str, ...] = ()
_POLL_S = 0.05  # pause between reads while METEOR is still answering: lets its output accumulate


class MeteorError(RuntimeError):
    """METEOR could not be computed (process missing, crashed or answered nonsense)."""


class MeteorTimeout(MeteorError):
    """METEOR did not answer before the deadline; its process has been killed."""


def meteor_dir() -> Path:
    """The folder of pycocoevalcap's ``meteor-1.5.jar`` (found without importing pycocoevalcap).

    Raises:
        MeteorError: pycocoevalcap or the jar is missing.
    """
    spec = importlib.util.find_spec("pycocoevalcap")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "meteor"
        if (folder / METEOR_JAR).is_file():
            return folder
    raise MeteorError(f"{METEOR_JAR} not found: is pycocoevalcap installed? (`pip install pycocoevalcap`)")


def meteor_command(java: str) -> list[str]:
    """pycocoevalcap's METEOR command line, with an explicit ``java`` and :data:`METEOR_JVM_OPTIONS`."""
    return [java, *jvm_options(), "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]


def jvm_options() -> tuple[str, ...]:
    """The extra JVM options: ``$PANOLLAVA_METEOR_JVM_OPTIONS`` if set, else :data:`METEOR_JVM_OPTIONS`."""
    override = os.environ.get("PANOLLAVA_METEOR_JVM_OPTIONS")
    return tuple(override.split()) if override is not None else METEOR_JVM_OPTIONS


def _score_line(hypothesis: str, references: Sequence[str]) -> str:
    # pycocoevalcap.meteor.meteor.Meteor._stat
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


class MeteorProcess:
    """One running METEOR JVM.

    Args:
        command: Command line (default: pycocoevalcap's, see :func:`meteor_command`).
        cwd: Working folder (default: pycocoevalcap's ``meteor/`` folder, where the jar and its data live).
    """

    def __init__(self, command: Sequence[str], cwd: str | Path | None = None) -> None:
        self.command = list(command)
        self._stderr = tempfile.TemporaryFile()
        self.started_at = time.monotonic()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            self.command,
            cwd=str(cwd) if cwd is not None else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,  # a file, never a pipe nobody reads (a full pipe would hang the JVM)
        )
        logger.debug("started METEOR (pid %d): %s", self.proc.pid, " ".join(self.command))

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stderr_tail(self, limit: int = 600) -> str:
        """The last characters the process wrote to stderr."""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode("utf-8", errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        """Kill the process (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def _describe_exit(self) -> str:
        code = self.proc.poll()
        tail = self.stderr_tail()
        state = f"exited with status {code}" if code is not None else "closed its output"
        message = f"the METEOR process (pid {self.proc.pid}) {state}"
        return message + (f"; its stderr ends with: {tail}" if tail else "")

    def _write_all(self, data: bytes, errors: list[BaseException]) -> None:
        fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view[: 1 << 16])
                view = view[written:]
        except OSError as exc:  # broken pipe: the process died or was killed
            errors.append(exc)

    def _read_lines(self, count: int, deadline: float) -> list[str]:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        buffer = bytearray()
        found = 0
        while found < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MeteorTimeout("deadline")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise MeteorError(self._describe_exit())
            buffer += chunk
            found += chunk.count(b"\n")
            if found < count:
                time.sleep(_POLL_S)
        lines = buffer.decode("utf-8", errors="replace").split("\n")
        if found != count or lines[-1] != "":
            raise MeteorError(f"METEOR answered {found} lines where {count} were expected")
        return [line.strip() for line in lines[:-1]]

    def _exchange(self, payload: bytes, count: int, deadline: float) -> list[str]:
        errors: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_all, args=(payload, errors), name="meteor-writer", daemon=True
        )
        writer.start()
        try:
            lines = self._read_lines(count, deadline)
        finally:
            writer.join(timeout=max(0.0, deadline - time.monotonic()))
        if errors:
            raise MeteorError(f"could not write to METEOR ({errors[0]}); {self._describe_exit()}")
        return lines

    def score(
        self,
        references: Mapping[str, Sequence[str]],
        hypotheses: Mapping[str, Sequence[str]],
        deadline: float,
    ) -> tuple[float, list[float]]:
        """METEOR of tokenized hypotheses against their references, as ``Meteor().compute_score(gts, res)``.

        Args:
            references: ``id -> [reference, ...]`` (PTB-tokenized).
            hypotheses: ``id -> [hypothesis]`` with the same ids in the same order.
            deadline: ``time.monotonic()`` value after which the process is killed.

        Returns:
            The corpus METEOR and the per-sample scores (in the order of ``references``).

        Raises:
            MeteorTimeout: Past the deadline (the process is killed).
            MeteorError: The process died or answered something else than numbers.
        """
        if list(references) != list(hypotheses):
            raise ValueError("references and hypotheses must have the same ids in the same order")
        ids = list(references)
        with self._lock:
            try:
                if not self.alive:
                    raise MeteorError(self._describe_exit())
                lines = [_score_line(hypotheses[i][0], references[i]) for i in ids]
                payload = "".join(line + "\n" for line in lines).encode("utf-8")
                stats = self._exchange(payload, len(ids), deadline)
                eval_line = "EVAL" + "".join(f" ||| {s}" for s in stats) + "\n"
                answers = self._exchange(eval_line.encode("utf-8"), len(ids) + 1, deadline)
                try:
                    values = [float(a) for a in answers]
                except ValueError as exc:
                    raise MeteorError(f"METEOR answered a non-number: {exc}; {self.stderr_tail()}") from exc
                return values[-1], values[:-1]
            except BaseException:
                self.kill()
                raise


_SHARED: MeteorProcess | None = None
_SHARED_LOCK = threading.Lock()


def get_meteor(java: str) -> MeteorProcess:
    """The process-wide METEOR JVM, started on first use (or again after a kill or crash).

    Args:
        java: The ``java`` executable.
    """
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED.alive:
            _SHARED = MeteorProcess(meteor_command(java), cwd=meteor_dir())
        return _SHARED


def prestart_meteor(java: str | None) -> None:
    """Start the shared METEOR JVM now (its 5-6 s start overlaps what comes next); no-op without Java."""
    if java is None:
        return
    try:
        get_meteor(java)
    except (OSError, MeteorError) as exc:
        logger.debug("could not prestart METEOR: %s", exc)


def close_meteor() -> None:
    """Stop the shared METEOR JVM (it is also stopped when Python exits)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is not None:
            _SHARED.kill()
            _SHARED = None


atexit.register(close_meteor)
