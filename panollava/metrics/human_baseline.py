"""The human leave-one-out baseline: how a human caption scores against the other humans' captions.

For each (image, query) group with at least two reference captions, the first caption (in file order) plays
the prediction and the others are its references. Its scores are a ceiling-ish yardstick for model numbers on
the same data (QuIC-360 test: BLEU-4 0.068, METEOR 0.144, ROUGE-L 0.280, CIDEr-D 0.160), and the workload of
the metric parity tests and benchmark. Empty caption cells (QuIC-360 test.csv has three) are skipped with a
warning: a caption nobody wrote is neither a prediction nor a reference.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path

from panollava.errors import InputNotFoundError, InvalidInputError

__all__ = ["human_leave_one_out"]

logger = logging.getLogger(__name__)


def human_leave_one_out(
    csv_path: str | Path,
    image_column: str = "url",
    query_column: str = "query",
    caption_column: str = "annotation",
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Leave-one-out predictions and references from an annotation CSV (one caption per row).

    Args:
        csv_path: CSV with image, query and caption columns (QuIC-360 layout: ``url,query,annotation``).
        image_column: Image column.
        query_column: Query column.
        caption_column: Caption column.

    Returns:
        ``(predictions, references)`` keyed by ``"0"``, ``"1"``, ... in order of the groups' first rows.

    Raises:
        InputNotFoundError: The CSV does not exist.
        InvalidInputError: A column is missing.
    """
    path = Path(csv_path).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(f"annotation CSV not found: '{path}'")
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in (image_column, query_column, caption_column) if c not in columns]
        if missing:
            raise InvalidInputError(
                f"'{path}' lacks column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames or [])})"
            )
        empty = []
        for line, row in enumerate(reader, start=2):
            if not (row[caption_column] or "").strip():
                empty.append(line)  # a caption nobody wrote is neither a prediction nor a reference
                continue
            groups[(row[image_column], row[query_column])].append(row[caption_column])
    if empty:
        logger.warning("'%s': %d empty %s cell(s) skipped (lines %s)", path, len(empty), caption_column,
                       ", ".join(map(str, empty[:10])))
    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    for captions in groups.values():
        if len(captions) < 2:
            continue
        key = str(len(predictions))
        predictions[key] = captions[0]
        references[key] = captions[1:]
    return predictions, references
