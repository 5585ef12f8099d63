"""QuIC-360-style caption CSVs (``url,query,annotation``) and the datasets built on them.

For evaluation, rows that share (``url``, ``query``) are one sample with several references (generate once, score
against all); ``reference_mode="per_row"`` keeps the original tool's one-reference-per-row scoring as a legacy mode.
For training each row is one example (the annotation is the target).

Duplicate policy (the tool's only one): an exact duplicate row (same ``url``, ``query`` and ``annotation``) is
dropped when the CSV is read, with one warning naming its lines, because it would count one reference twice.
Rows that share (``url``, ``query``) with different annotations are the references of one sample.

Empty-reference policy (the tool's only one, shared by ``test``, ``predict``, training and ``score``:
:func:`drop_missing_references`): an empty annotation, or one holding a missing-value marker such as ``nan``, is
dropped with one warning naming its lines and saying how many references the affected samples keep; a sample left
with no reference at all is an error naming it. An empty ``url`` or ``query`` is always an error.

A sample's id is derived from the CSV alone (a hash of url and query, plus the row in per-row mode), so it is the
same across runs, subsets and world sizes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.schema import EvaluationOptions

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


#: Cell values that mean "missing" (what pandas, numpy and Python write for a missing value); never text.
MISSING_CELL_VALUES = frozenset({"nan", "NaN", "NAN", "-nan", "<NA>", "None", "null", "NULL", "#N/A"})

#: How many offending lines an error or warning lists before "and N more".
_SHOWN_LINES = 10


def _show_lines(lines: Sequence[int | str]) -> str:
    shown = ", ".join(str(n) for n in lines[:_SHOWN_LINES])
    return shown + (f" and {len(lines) - _SHOWN_LINES} more" if len(lines) > _SHOWN_LINES else "")


def is_missing_text(value: object) -> bool:
    """Whether a cell or reference holds no text: ``None``, blank, or a missing-value marker such as ``nan``.

    Args:
        value: The cell's value (a string, or ``None``/a float NaN as a JSON or pandas reader may give).

    Returns:
        True when nobody wrote anything there.
    """
    if value is None or (isinstance(value, float) and value != value):  # None, or pandas' NaN
        return True
    text = str(value).strip()
    return not text or text in MISSING_CELL_VALUES


def drop_missing_references(
    source: str | Path,
    samples: Mapping[str, Sequence[tuple[int | str, object]]],
    where: str = "line",
) -> dict[str, list[tuple[int | str, str]]]:
    """The one empty-reference policy: drop empty or missing-value references, refuse a sample left with none.

    Args:
        source: The file, as messages name it.
        samples: For each sample, named as messages show it (e.g. ``"url 'a.jpg', query 'room'"``), its references
            in order as ``(place, text)``, where ``place`` says where the reference is (a line number, or
            ``"5 #2"`` for the second reference on line 5).
        where: What a place is (``"line"``, ``"item"``), for the messages.

    Returns:
        For each sample, its kept ``(place, text)`` pairs, in order.

    Raises:
        InvalidInputError: A sample has no reference left (every such sample and its places are named).
    """
    kept: dict[str, list[tuple[int | str, str]]] = {}
    dropped: list[int | str] = []
    affected: dict[str, int] = {}
    empty_samples: list[str] = []
    for name, references in samples.items():
        kept[name] = [(place, str(text)) for place, text in references if not is_missing_text(text)]
        lost = [place for place, text in references if is_missing_text(text)]
        if not lost:
            continue
        dropped.extend(lost)
        if kept[name]:
            affected[name] = len(kept[name])
        else:
            empty_samples.append(f"{name} ({where}(s) {_show_lines(lost)})")
    if empty_samples:
        shown = "; ".join(empty_samples[:_SHOWN_LINES]) + (
            f" and {len(empty_samples) - _SHOWN_LINES} more" if len(empty_samples) > _SHOWN_LINES else ""
        )
        raise InvalidInputError(
            f"'{source}': {len(empty_samples)} sample(s) have no reference left after dropping empty or "
            f"missing-value references (such as 'nan'): {shown}. A sample is scored against its references: fill "
            "in at least one reference for it, or delete its rows"
        )
    if dropped:
        counts = Counter(affected.values())
        keep = ", ".join(
            f"{n} sample{'s' if n > 1 else ''} keep{'' if n > 1 else 's'} {refs} reference{'s' if refs > 1 else ''}"
            for refs, n in sorted(counts.items())
        )
        logger.warning(
            "'%s': dropped %d empty or missing-value reference(s) (such as 'nan') on %s(s) %s: a reference nobody "
            "wrote is never scored. The other references of those samples are kept: %s. Fill in or delete those "
            "cells to silence this warning",
            source, len(dropped), where, _show_lines(dropped), keep,
        )
    return kept


def _decode_csv(path: Path) -> str:
    """The CSV's text: UTF-8 with or without a byte-order mark; bad bytes raise naming their offset and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.end].hex(" ")
        raise InvalidInputError(
            f"caption CSV '{path}' is not valid UTF-8: byte(s) 0x{bad} at byte offset {exc.start} (line {line}, "
            f"column {column}): {exc.reason}. Re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _csv_records(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (first physical line, cells) of every non-blank record; line numbers count blank lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    records: list[tuple[int, list[str]]] = []
    previous_end = 0
    try:
        for cells in reader:
            line = previous_end + 1
            previous_end = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line (or a line of empty cells): skipped, but it still counts for numbering
            if header is None:
                header = [c.strip() for c in cells]
            else:
                records.append((line, cells))
    except csv.Error as exc:
        raise InvalidInputError(
            f"caption CSV '{path}' line {previous_end + 1} could not be parsed: {exc}. Check the quoting of that "
            "line (a field with a comma, quote or line break must be in double quotes, inner quotes doubled)"
        ) from None
    if header is None:
        raise InvalidInputError(
            f"caption CSV '{path}' is empty; expected a header line url,query,annotation followed by one row per "
            "reference caption"
        )
    return header, records


def read_caption_csv(
    path: str | Path,
    image_root: str | Path | None = None,
    require_annotation: bool = True,
    check_images: bool = True,
) -> list[dict[str, Any]]:
    """Read and validate a caption CSV.

    Read with the ``csv`` module (not pandas) so that every error names the physical line of the file, blank lines
    included. Empty or missing-value annotations are dropped by the empty-reference policy
    (:func:`drop_missing_references`: a warning names their lines; a sample left with none is an error). Exact
    duplicate rows (same ``url``, ``query`` and ``annotation``) are dropped with one warning naming
    their lines: a repeated row would count one reference twice. This is the tool's one duplicate policy.

    Args:
        path: CSV with columns ``url``, ``query`` and (unless ``require_annotation`` is False) ``annotation``;
            UTF-8, a byte-order mark is accepted. Blank lines are skipped.
        image_root: Folder that relative ``url`` values resolve against (default: the CSV's folder).
        require_annotation: Whether ``annotation`` must be present.
        check_images: Check up front that every image file exists.

    Returns:
        One dict per kept row: ``url``, ``query``, ``annotation`` (or None), ``image_path`` (absolute), ``row``
        (the line of the file, 1 = header).

    Raises:
        InputNotFoundError: the CSV or an image is missing (the row and path are named).
        InvalidInputError: the file is empty, header-only, not UTF-8 or not parseable; a required column is
            missing; a row has the wrong number of cells; a ``url`` or ``query`` cell is empty or holds a
            missing-value marker such as ``nan`` (every offending line and column is named); a (url, query)
            sample has no non-empty annotation (empty annotations among others are dropped with a warning).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise InputNotFoundError(f"caption CSV '{path}' {what}; pass an existing CSV file (--csv_input)")
    header, records = _csv_records(path, _decode_csv(path))
    required = ["url", "query"] + (["annotation"] if require_annotation else [])
    missing = [c for c in required if c not in header]
    if missing:
        raise InvalidInputError(
            f"caption CSV '{path}' lacks column(s) {missing} (found: {header}); "
            "expected the QuIC-360 columns url,query,annotation"
            + ("; to caption a CSV without references use 'predict'" if missing == ["annotation"] else "")
        )
    repeated = sorted({c for c in header if header.count(c) > 1 and c in ("url", "query", "annotation")})
    if repeated:
        raise InvalidInputError(f"caption CSV '{path}' has the column(s) {repeated} more than once: {header}")
    has_annotation = "annotation" in header
    wanted = ["url", "query"] + (["annotation"] if has_annotation else [])
    position = {c: header.index(c) for c in wanted}
    if not records:
        raise InvalidInputError(
            f"caption CSV '{path}' has a header but no rows; add one row per reference caption (url,query,annotation)"
        )
    root = Path(image_root).expanduser().resolve() if image_root else path.parent
    bad_width = [(line, len(cells)) for line, cells in records if len(cells) != len(header)]
    if bad_width:
        line, width = bad_width[0]
        raise InvalidInputError(
            f"caption CSV '{path}' line {line} has {width} cell(s) but the header has {len(header)} "
            f"({len(bad_width)} such line(s): {_show_lines([n for n, _ in bad_width])}); quote fields that contain "
            "commas and check for missing or extra separators"
        )
    empty: dict[str, list[int]] = {}
    rows: list[dict[str, Any]] = []
    for line, cells in records:
        values = {c: cells[i].strip() for c, i in position.items()}
        for column in ("url", "query"):
            if is_missing_text(values[column]):
                empty.setdefault(column, []).append(line)
        if "://" in values["url"]:  # urls are not downloaded: say so, not "file does not exist"
            from panollava.data.images import remote_url_error

            remote = remote_url_error(values["url"], f"caption CSV '{path}' line {line}")
            if remote is not None:
                raise remote
        image = Path(values["url"]).expanduser()
        image = image if image.is_absolute() else root / image
        rows.append(
            {
                "url": values["url"],
                "query": values["query"],
                "annotation": values["annotation"] if has_annotation else None,
                "image_path": str(image),
                "row": line,
            }
        )
    if empty:
        first_column, first_lines = next(iter(empty.items()))
        everywhere = "; ".join(f"column {c!r} on line(s) {_show_lines(lines)}" for c, lines in empty.items())
        raise InvalidInputError(
            f"caption CSV '{path}' line {first_lines[0]}: column {first_column!r} is empty or a missing-value "
            f"marker such as 'nan' (all: {everywhere}). An empty query cannot be prompted and an empty url names "
            "no panorama: fill in or delete those rows"
        )
    if has_annotation:  # without references a repeated (url, query) is simply one sample
        rows = _drop_missing_annotations(path, rows)
        rows = _drop_exact_duplicates(path, rows)
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


def _drop_missing_annotations(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose annotation is empty or a missing-value marker are dropped (:func:`drop_missing_references`)."""
    samples: dict[str, list[tuple[int | str, object]]] = {}
    for rec in rows:
        samples.setdefault(f"url {rec['url']!r}, query {rec['query']!r}", []).append((rec["row"], rec["annotation"]))
    kept = {place for refs in drop_missing_references(path, samples).values() for place, _ in refs}
    return [rec for rec in rows if rec["row"] in kept]


def _drop_exact_duplicates(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first of rows with the same (url, query, annotation), warning once with every repeated line."""
    first: dict[tuple[str, str, str | None], int] = {}
    kept: list[dict[str, Any]] = []
    repeats: list[str] = []
    for rec in rows:
        key = (rec["url"], rec["query"], rec["annotation"])
        if key in first:
            repeats.append(f"{rec['row']} (= line {first[key]})")
            continue
        first[key] = rec["row"]
        kept.append(rec)
    if repeats:
        shown = ", ".join(repeats[:_SHOWN_LINES]) + (
            f" and {len(repeats) - _SHOWN_LINES} more" if len(repeats) > _SHOWN_LINES else ""
        )
        logger.warning(
            "caption CSV '%s': dropped %d exact duplicate row(s) (same url, query and annotation), which would "
            "count one reference twice: line(s) %s. Remove them from the file to silence this warning",
            path, len(repeats), shown,
        )
    return kept


def group_samples(
    rows: Sequence[dict[str, Any]], reference_mode: str = EvaluationOptions.reference_mode
) -> list[CaptionSample]:
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
