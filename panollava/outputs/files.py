"""``predictions.jsonl``, ``predictions.csv`` and ``metrics.json``: written atomically, and read back.

Every file is written to a temporary file in the output directory and renamed into place, so a crash never leaves a
half-written result behind. The one writer of the predictions files is :func:`write_predictions`, of metrics.json
:func:`write_json_atomic`; their readers are :func:`read_prediction_records` (predictions.jsonl, as ``report``,
``compare`` and ``judge`` read it), :func:`read_json_lines` (the JSON-lines parser under it, also used by ``score``
and by the resume of an evaluation for its shards) and :func:`read_json_object` (metrics.json). ``predictions.csv``
is read by ``score`` (:func:`panollava.commands.score.read_predictions`, any predictions CSV).
Light module: no torch / lightning imports.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metrics.names import OFFICIAL_METRICS, PER_SAMPLE_METRICS

logger = logging.getLogger(__name__)

RECORD_KEYS = ("sample_id", "index", "image", "image_path", "query", "prediction", "references")
"""Keys of a per-sample record in ``predictions.jsonl``, in order (``scores`` follows when scored)."""

#: The columns that identify the original PanoLLaVA tool's ``*_predictions_*.csv`` (it also writes sample_id,
#: pred_length, ref_length, is_error, is_empty).
ORIGINAL_COLUMNS = ("image_path", "original_query", "prediction", "reference")
#: ``dataset.prediction_choice`` of metrics.json: which prediction of a sample was scored, in words.
PREDICTION_CHOICES = {
    "single": "one prediction per sample",
    "first_row": "the first row's prediction of samples that carried several (the others set aside)",
    "per_row": "each row's prediction against its own reference",
}


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, fsync, ``os.replace``, then an
    fsync of the folder. A crash leaves the old or the new file, never half of one; an existing file keeps its
    permissions (new files get 0o644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some filesystems cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Pretty JSON (UTF-8, non-ASCII kept) written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object (``metrics.json``), with errors that name the file.

    Raises:
        InvalidInputError: the file is not valid JSON or not an object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"'{path}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"'{path}': expected a JSON object, found {type(data).__name__}")
    return data


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def attach_scores(records: Sequence[dict[str, Any]], per_sample: Mapping[str, Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Copy records, adding ``scores`` (bleu_4, cider, rouge_l, meteor) per sample when available."""
    out = []
    for rec in records:
        item = {k: rec[k] for k in RECORD_KEYS if k in rec}
        if per_sample is not None and rec["sample_id"] in per_sample:
            item["scores"] = {k: per_sample[rec["sample_id"]].get(k) for k in PER_SAMPLE_METRICS}
        out.append(item)
    return out


def write_predictions(
    output_dir: str | Path, records: Sequence[dict[str, Any]], stem: str = "predictions"
) -> tuple[Path, Path]:
    """Write ``<stem>.jsonl`` (one object per sample) and ``<stem>.csv`` (flat: references as a JSON list, one
    column per score)."""
    output_dir = Path(output_dir)
    jsonl = output_dir / f"{stem}.jsonl"
    write_text_atomic(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["sample_id", "image", "query", "prediction", "references", *PER_SAMPLE_METRICS])
    for r in records:
        scores = r.get("scores") or {}
        writer.writerow(
            [r["sample_id"], r.get("image", ""), r.get("query", ""), r["prediction"],
             json.dumps(r.get("references", []), ensure_ascii=False)]
            + ["" if scores.get(k) is None else scores[k] for k in PER_SAMPLE_METRICS]
        )
    csv_path = output_dir / f"{stem}.csv"
    write_text_atomic(csv_path, buf.getvalue())
    return jsonl, csv_path


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A small text table of the official metrics."""
    rows = []
    for key in OFFICIAL_METRICS:
        value = metrics.get(key)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        reason = (metrics.get("unavailable") or {}).get(key)
        rows.append(f"  {key:<8} {shown}" + (f"  ({reason})" if value is None and reason else ""))
    return "\n".join(rows)


def installed_library_versions(
    names: tuple[str, ...] = ("torch", "lightning", "transformers", "peft"),
) -> dict[str, str | None]:
    """Versions of installed libraries, read from package metadata (nothing is imported).

    Args:
        names: the distributions to look up.

    Returns:
        ``name → version`` (None when not installed) plus ``"python"``.
    """
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def is_original_predictions_csv(columns: Sequence[str]) -> bool:
    """Whether a CSV header is that of the original PanoLLaVA tool's ``*_predictions_*.csv``."""
    return all(c in columns for c in ORIGINAL_COLUMNS)


def read_json_lines(path: Path, *, cut_tail_ok: bool = False) -> list[tuple[int, Any]]:
    """The JSON value of each non-blank line of a JSON-lines file, with its line number.

    Lines end at ``\\n`` only (a caption may hold U+2028, which ``json.dumps(ensure_ascii=False)`` leaves raw); a
    leading byte-order mark is ignored.

    Args:
        path: The file.
        cut_tail_ok: A last line without its newline that is not JSON (a write cut short by a kill) is skipped and
            logged instead of refused; undecodable bytes are replaced (a kill can cut a character in two).

    Returns:
        ``(line number, value)`` per non-blank line, in file order.

    Raises:
        InvalidInputError: A line is not valid JSON (named by number).
    """
    text = path.read_text(encoding="utf-8-sig", errors="replace" if cut_tail_ok else "strict")
    lines = text.split("\n")
    values = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            if cut_tail_ok and number == len(lines):  # the unterminated tail of a killed write
                logger.info("ignoring the incomplete last line of '%s' (a run was killed while writing it)", path)
                continue
            raise InvalidInputError(f"'{path}' line {number} is not valid JSON: {exc}") from exc
    return values


def _csv_message(path: Path) -> str:
    """What a CSV given as --predictions is, and which command turns it into what report reads."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        header = []
    jsonl = path.with_suffix(".jsonl")
    if jsonl.is_file():
        return f"'{path}' is a CSV; the report reads the predictions.jsonl beside it: pass --predictions {jsonl}"
    out = path.parent / f"{path.stem}_scored"
    what = "a predictions CSV"
    if is_original_predictions_csv(header):
        what = ("a predictions CSV of the original PanoLLaVA tool (one row per reference, several predictions per "
                "(image_path, original_query) sample, no per-sample scores)")
    return (
        f"'{path}' is {what}; the report needs per-sample scores. Score it first: panollava-cli score "
        f"--predictions {path} --output_dir {out} (grouped by default; --reference_mode per_row for the original "
        f"tool's protocol), then: panollava-cli report --predictions {out / 'predictions_scored.jsonl'}"
    )


def read_prediction_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a predictions.jsonl file: one JSON object per line, each with ``sample_id`` and ``prediction``.

    Args:
        path: The file.

    Returns:
        The records, in file order.

    Raises:
        InputNotFoundError: The file does not exist.
        InvalidInputError: A line is not a JSON object with ``sample_id`` and ``prediction`` (named by line), or
            the file is a CSV (the message says which command to run: for the original tool's predictions CSV,
            ``score`` first).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(
            f"predictions file not found: '{path}'. Pass the predictions.jsonl that 'panollava-cli test' wrote"
        )
    if path.suffix.lower() == ".csv":
        raise InvalidInputError(_csv_message(path))
    records = []
    for number, item in read_json_lines(path):
        if not isinstance(item, dict) or "sample_id" not in item or "prediction" not in item:
            found = ", ".join(sorted(item)) if isinstance(item, dict) else type(item).__name__
            raise InvalidInputError(
                f"'{path}' line {number}: expected an object with sample_id and prediction (found: {found})"
            )
        records.append(item)
    if not records:
        raise InvalidInputError(f"'{path}' holds no samples")
    return records
