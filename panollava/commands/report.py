"""``panollava-cli report``: (re)build ``report.html`` from an evaluation's files.

Reads ``predictions.jsonl`` (one object per sample, as ``test``/``predict``/``score`` write it) and the
``metrics.json`` beside it (or ``--metrics``), and writes ``report.html`` with
:func:`panollava.outputs.report_html.write_report_html`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from panollava.errors import InputNotFoundError
from panollava.outputs.files import read_json_object, read_prediction_records
from panollava.outputs.report_html import write_report_html

logger = logging.getLogger(__name__)

__all__ = ["run_report"]


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
    source = Path(predictions).expanduser().resolve()
    records = read_prediction_records(source)
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
