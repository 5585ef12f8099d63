"""QuIC-360-style caption CSVs (``url,query,annotation``) and the datasets built on them.

For evaluation, rows that share (``url``, ``query``) are one sample with several references (generate once, score
against all); ``reference_mode="per_row"`` keeps the original tool's one-reference-per-row scoring as a legacy mode.
For training each row is one example (the annotation is the target).

A sample's id is derived from the CSV alone (a hash of url and query, plus the row in per-row mode), so it is the
same across runs, subsets and world sizes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError

logger = logging.getLogger(__name__)

REFERENCE_MODES = ("grouped", "per_row")


@dataclass
class CaptionSample:
    """One (panorama, query) with its reference captions.

    Attributes:
        sample_id: Stable id derived from the CSV.
        image_path: Absolute path of the panorama.
        url: The CSV's ``url`` value as written.
        query: The query text.
        references: Reference captions (empty when the CSV has no annotations).
        rows: CSV line numbers (1 = header) the sample came from.
    """

    sample_id: str
    image_path: str
    url: str
    query: str
    references: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


def sample_id_for(url: str, query: str, row: int | None = None) -> str:
    """Stable sample id: 12 hex digits of sha1(url, query), with ``-r<row>`` in per-row mode."""
    digest = hashlib.sha1(f"{url}\x1f{query}".encode()).hexdigest()[:12]
    return digest if row is None else f"{digest}-r{row}"


def read_caption_csv(
    path: str | Path,
    image_root: str | Path | None = None,
    require_annotation: bool = True,
    check_images: bool = True,
) -> list[dict[str, Any]]:
    """Read and validate a caption CSV.

    Args:
        path: CSV with columns ``url``, ``query`` and (unless ``require_annotation`` is False) ``annotation``.
        image_root: Folder that relative ``url`` values resolve against (default: the CSV's folder).
        require_annotation: Whether ``annotation`` must be present.
        check_images: Check up front that every image file exists.

    Returns:
        One dict per row: ``url``, ``query``, ``annotation`` (or None), ``image_path`` (absolute), ``row``.

    Raises:
        InputNotFoundError: the CSV or an image is missing (the row and path are named).
        InvalidInputError: a required column is missing or a cell is empty.
    """
    import pandas as pd

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(f"caption CSV '{path}' does not exist; pass an existing file (--csv_input)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"caption CSV '{path}' could not be parsed: {exc}") from exc
    required = ["url", "query"] + (["annotation"] if require_annotation else [])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"caption CSV '{path}' lacks column(s) {missing} (found: {list(frame.columns)}); "
            "expected the QuIC-360 columns url,query,annotation"
        )
    has_annotation = "annotation" in frame.columns
    root = Path(image_root).expanduser().resolve() if image_root else path.parent
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.to_dict("records")):
        line = i + 2  # line 1 is the header
        for column in required:
            if not str(rec[column]).strip():
                raise InvalidInputError(f"caption CSV '{path}' line {line}: column {column!r} is empty")
        url = str(rec["url"]).strip()
        image = Path(url).expanduser()
        image = image if image.is_absolute() else root / image
        rows.append(
            {
                "url": url,
                "query": str(rec["query"]).strip(),
                "annotation": str(rec["annotation"]).strip() if has_annotation else None,
                "image_path": str(image),
                "row": line,
            }
        )
    if not rows:
        raise InvalidInputError(f"caption CSV '{path}' has a header but no rows")
    if check_images:
        seen: dict[str, int] = {}
        for rec in rows:
            seen.setdefault(rec["image_path"], rec["row"])
        missing_images = [(p, r) for p, r in seen.items() if not Path(p).is_file()]
        if missing_images:
            first, line = missing_images[0]
            raise InputNotFoundError(
                f"caption CSV '{path}' line {line}: image '{first}' does not exist "
                f"({len(missing_images)} of {len(seen)} images missing); relative urls resolve against "
                f"'{root}' — set the image root (--data.image_root) or fix the paths"
            )
    return rows


def group_samples(rows: Sequence[dict[str, Any]], reference_mode: str = "grouped") -> list[CaptionSample]:
    """Evaluation samples: one per (url, query) with all its annotations, or one per row (legacy).

    Samples keep the order of their first row.
    """
    if reference_mode not in REFERENCE_MODES:
        raise InvalidInputError(f"reference_mode {reference_mode!r} is not one of {REFERENCE_MODES}")
    samples: dict[str, CaptionSample] = {}
    for rec in rows:
        row = rec["row"] if reference_mode == "per_row" else None
        sid = sample_id_for(rec["url"], rec["query"], row)
        sample = samples.get(sid)
        if sample is None:
            sample = samples[sid] = CaptionSample(sid, rec["image_path"], rec["url"], rec["query"])
        if rec["annotation"] is not None:
            sample.references.append(rec["annotation"])
        sample.rows.append(rec["row"])
    return list(samples.values())


def training_samples(rows: Sequence[dict[str, Any]]) -> list[CaptionSample]:
    """Training/validation examples: one per row, the annotation as the single target."""
    return [
        CaptionSample(
            sample_id_for(r["url"], r["query"], r["row"]), r["image_path"], r["url"], r["query"], [r["annotation"]], [r["row"]]
        )
        for r in rows
    ]
