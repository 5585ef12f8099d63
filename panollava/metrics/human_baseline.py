"""The human leave-one-out baseline: how a human caption scores against the other humans' captions.

For each (image, query) group with at least two reference captions, the first caption (in file order) plays
the prediction and the others are its references. Its scores are a ceiling-ish yardstick for model numbers on
the same data (QuIC-360 test: BLEU-4 0.068, METEOR 0.144, ROUGE-L 0.280, CIDEr-D 0.160), and the workload of
the metric parity tests and benchmark. Empty caption cells (QuIC-360 test.csv has three, lines 1967, 3380 and
4170) follow the tool's one empty-reference policy (:func:`panollava.data.dataset.drop_missing_references`): a
caption nobody wrote is neither a prediction nor a reference, and is dropped with a warning naming its line.
:func:`human_leave_one_out_records` can also keep them among the references, as they are in the file, so that
``score`` applies the policy itself.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from panollava.data.dataset import drop_missing_references, is_missing_text
from panollava.errors import InputNotFoundError, InvalidInputError

__all__ = ["human_leave_one_out", "human_leave_one_out_records"]

logger = logging.getLogger(__name__)


def _read_groups(
    path: Path, image_column: str, query_column: str, caption_column: str
) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(image, query) → [(physical line, caption as written)], in order of the groups' first rows."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        end = 0
        for cells in reader:
            line, end = end + 1, reader.line_num
            if not cells:
                continue
            if header is None:
                header = cells
                missing = [c for c in (image_column, query_column, caption_column) if c not in header]
                if missing:
                    raise InvalidInputError(
                        f"'{path}' lacks column(s) {', '.join(missing)} (found: {', '.join(header)})"
                    )
                continue
            row = dict(zip(header, cells))
            key = (row.get(image_column, ""), row.get(query_column, ""))
            groups.setdefault(key, []).append((line, row.get(caption_column, "")))
    if header is None:
        raise InvalidInputError(
            f"'{path}' is empty; expected a header with {image_column},{query_column},{caption_column}"
        )
    return groups


def human_leave_one_out_records(
    csv_path: str | Path,
    image_column: str = "url",
    query_column: str = "query",
    caption_column: str = "annotation",
    keep_missing: bool = False,
) -> list[dict[str, Any]]:
    """Leave-one-out records (``predictions.jsonl`` objects) from an annotation CSV (one caption per row).

    Args:
        csv_path: CSV with image, query and caption columns (QuIC-360 layout: ``url,query,annotation``).
        image_column: Image column.
        query_column: Query column.
        caption_column: Caption column.
        keep_missing: Keep empty or missing-value caption cells among the references, as written (the prediction
            is always the group's first non-empty caption); by default they are dropped with a warning.

    Returns:
        One record per group with at least two non-empty captions: ``sample_id`` (``"0"``, ``"1"``, ... in order
        of the groups' first rows), ``image``, ``query``, ``prediction``, ``references``, ``lines`` (the CSV lines
        of the prediction, then of the references).

    Raises:
        InputNotFoundError: The CSV does not exist.
        InvalidInputError: A column is missing, or (unless ``keep_missing``) a group has no caption at all.
    """
    path = Path(csv_path).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(f"annotation CSV not found: '{path}'")
    groups = _read_groups(path, image_column, query_column, caption_column)
    if not keep_missing:
        named = {f"{image_column} {k[0]!r}, {query_column} {k[1]!r}": v for k, v in groups.items()}
        kept = drop_missing_references(path, named)  # type: ignore[arg-type]
        groups = {k: [(int(line), text) for line, text in kept[name]] for k, name in zip(groups, named)}
    records: list[dict[str, Any]] = []
    for (image, query), captions in groups.items():
        written = [i for i, (_, text) in enumerate(captions) if not is_missing_text(text)]
        if len(written) < 2:
            continue
        first = written[0]
        others = captions[:first] + captions[first + 1 :]
        records.append(
            {
                "sample_id": str(len(records)),
                "image": image,
                "query": query,
                "prediction": captions[first][1],
                "references": [text for _, text in others],
                "lines": [captions[first][0]] + [line for line, _ in others],
            }
        )
    return records


def human_leave_one_out(
    csv_path: str | Path,
    image_column: str = "url",
    query_column: str = "query",
    caption_column: str = "annotation",
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Leave-one-out predictions and references from an annotation CSV (one caption per row).

    Empty or missing-value caption cells are dropped with a warning naming their lines.

    Args:
        csv_path: CSV with image, query and caption columns (QuIC-360 layout: ``url,query,annotation``).
        image_column: Image column.
        query_column: Query column.
        caption_column: Caption column.

    Returns:
        ``(predictions, references)`` keyed by ``"0"``, ``"1"``, ... in order of the groups' first rows.

    Raises:
        InputNotFoundError: The CSV does not exist.
        InvalidInputError: A column is missing, or a group has no caption at all.
    """
    records = human_leave_one_out_records(csv_path, image_column, query_column, caption_column)
    return {r["sample_id"]: r["prediction"] for r in records}, {r["sample_id"]: r["references"] for r in records}
