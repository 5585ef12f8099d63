"""SPICE through pycocoevalcap's ``spice-1.0.jar``, only when its Stanford CoreNLP 3.6.0 jars are present.

pycocoevalcap's ``Spice()`` downloads Stanford CoreNLP (~400 MB) on construction. We never download: without
``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar`` in ``pycocoevalcap/spice/lib`` (or
without Java) SPICE is reported as unavailable, with that reason, instead of a number. With them, the jar is
run as ``Spice.compute_score`` runs it (same input JSON, same flags) and its corpus score is the mean of the
per-sample ``All`` F-scores.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["SpiceRun", "spice_dir", "spice_unavailable_reason"]

SPICE_JAR = "spice-1.0.jar"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_dir() -> Path | None:
    """pycocoevalcap's ``spice/`` folder, or ``None`` without pycocoevalcap."""
    spec = importlib.util.find_spec("pycocoevalcap")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "spice"
        if (folder / SPICE_JAR).is_file():
            return folder
    return None


def spice_unavailable_reason(java: str | None) -> str | None:
    """Why SPICE cannot run here, or ``None`` when it can."""
    folder = spice_dir()
    if folder is None:
        return f"SPICE needs pycocoevalcap's {SPICE_JAR}, which is not installed"
    missing = [name for name in CORENLP_JARS if not (folder / "lib" / name).is_file()]
    if missing:
        return (
            f"SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(missing)} in {folder / 'lib'}), which "
            "pycocoevalcap downloads on first use; it is not present and nothing is downloaded here"
        )
    if java is None:
        return "SPICE needs Java, and java is not on PATH"
    return None


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


class SpiceRun:
    """SPICE running in the background (a JVM of its own), started at construction.

    Args:
        references: ``id -> [tokenized reference, ...]``.
        hypotheses: ``id -> [tokenized hypothesis]``.
        java: The ``java`` executable.
        command: Override of the command (tests); ``{input}`` and ``{output}`` are replaced by the file paths.
    """

    def __init__(
        self,
        references: Mapping[str, Sequence[str]],
        hypotheses: Mapping[str, Sequence[str]],
        java: str,
        command: Sequence[str] | None = None,
    ) -> None:
        folder = spice_dir()
        self._tmp = tempfile.TemporaryDirectory(prefix="panollava-spice-")
        self.input = Path(self._tmp.name) / "input.json"
        self.output = Path(self._tmp.name) / "output.json"
        ids = sorted(references)  # pycocoevalcap sorts the ids
        data = [{"image_id": i, "test": hypotheses[i][0], "refs": list(references[i])} for i in ids]
        self.input.write_text(json.dumps(data, indent=2), encoding="utf-8")
        template = list(command) if command is not None else [
            java, "-jar", "-Xmx8G", SPICE_JAR, "{input}", "-out", "{output}", "-subset", "-silent"]
        files = {"{input}": str(self.input), "{output}": str(self.output)}
        cmd = [files.get(part, part) for part in template]
        self._log = tempfile.TemporaryFile()
        cwd = str(folder) if folder else None
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log, stderr=self._log)

    def result(self, timeout_s: float) -> float:
        """Wait for the corpus SPICE.

        Raises:
            RuntimeError: Timeout (the process is killed), failure, or no usable score.
        """
        try:
            try:
                code = self.proc.wait(timeout=max(0.0, timeout_s))
            except subprocess.TimeoutExpired as exc:
                self.proc.kill()
                self.proc.wait()
                message = f"SPICE did not finish within {timeout_s:.0f} s; its process was killed"
                raise RuntimeError(message) from exc
            if code != 0:
                self._log.seek(0)
                tail = self._log.read().decode("utf-8", errors="replace")[-400:]
                raise RuntimeError(f"SPICE failed (exit {code}): {tail}")
            results = json.loads(self.output.read_text(encoding="utf-8"))
            values = [_as_float(item["scores"]["All"]["f"]) for item in results]
            missing = sum(math.isnan(v) for v in values)
            if not values or missing:
                # pycocoevalcap's mean would be NaN: report no number rather than a partial one.
                raise RuntimeError(f"SPICE gave no score for {missing} of {len(values)} samples")
            return sum(values) / len(values)
        finally:
            self._tmp.cleanup()
