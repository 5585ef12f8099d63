"""``panollava-cli report``: (re)build ``report.html`` from an evaluation's files.

Reads ``predictions.jsonl`` (one object per sample, as ``test``/``predict``/``score`` write it) and the
``metrics.json`` beside it (or ``--metrics``), and writes ``report.html`` with
:func:`panollava.report_html.write_report_html`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.report import read_json_object

logger = logging.getLogger(__name__)

__all__ = ["read_records", "run_report"]


def _csv_message(path: Path) -> str:
    """What a CSV given as --predictions is, and which command turns it into what report reads."""
    import csv

    from panollava.commands.score import is_original_predictions_csv

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


def read_records(path: str | Path) -> list[dict[str, Any]]:
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
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"'{path}' line {number} is not valid JSON: {exc}") from exc
        if not isinstance(item, dict) or "sample_id" not in item or "prediction" not in item:
            found = ", ".join(sorted(item)) if isinstance(item, dict) else type(item).__name__
            raise InvalidInputError(
                f"'{path}' line {number}: expected an object with sample_id and prediction (found: {found})"
            )
        records.append(item)
    if not records:
        raise InvalidInputError(f"'{path}' holds no samples")
    return records


def run_report(
    predictions: str,
    metrics: str | None = None,
    output_dir: str | None = None,
    image_root: str | None = None,
) -> Path:
    """Build ``report.html`` from a predictions file and its metrics.

    Args:
        predictions: predictions.jsonl (or predictions_scored.jsonl from ``score``).
        metrics: metrics.json (default: the one beside ``predictions``).
        output_dir: Folder for report.html (default: the folder of ``predictions``).
        image_root: Folder that relative image paths resolve against (default: as metrics.json records).

    Returns:
        The path of report.html.

    Raises:
        InputNotFoundError: A file is missing (the message says which flag to pass).
        InvalidInputError: A file is malformed.
    """
    from panollava.report_html import write_report_html

    source = Path(predictions).expanduser().resolve()
    records = read_records(source)
    metrics_path = Path(metrics).expanduser().resolve() if metrics else source.parent / "metrics.json"
    if not metrics_path.is_file():
        raise InputNotFoundError(
            f"metrics file not found: '{metrics_path}'"
            + ("" if metrics else " (looked beside the predictions file)")
            + ". Pass --metrics with the metrics.json of this evaluation"
        )
    metrics_data = read_json_object(metrics_path)
    out = Path(output_dir).expanduser().resolve() if output_dir else source.parent
    path = write_report_html(out, records, metrics_data, image_root=image_root)
    print(f"📄 Report: {path} ({len(records)} samples, {path.stat().st_size / 1e6:.1f} MB)")
    return path
