"""``panollava-cli score``: caption metrics for an existing predictions file, without a model.

Reads ``predictions.jsonl`` (one object per sample: ``sample_id``, ``prediction``, ``references``) or a CSV
(the original PanoLLaVA tool's ``*_predictions_*.csv`` included: one row per reference, grouped into (image, query)
samples by default, or scored per row with ``reference_mode="per_row"``), applies the tool's one empty-reference
policy (:func:`panollava.data.dataset.drop_missing_references`), scores it with
:func:`panollava.metrics.score_captions` and writes, into the output folder:

- ``metrics.json``: the official metrics as top-level numbers (``null`` + reason when unavailable), how they
  were computed, which file was scored (``source``) and how its rows became samples (``dataset``: format,
  reference mode, samples, rows, which prediction was scored, dropped references, a digest of the references);
- ``predictions_scored.jsonl`` / ``predictions_scored.csv``: the input records plus per-sample ``scores``
  (``bleu_4``, ``cider``, ``rouge_l``, ``meteor``), so the worst samples can be found.

Light module: neither torch, lightning nor transformers is imported (unless secondary metrics are requested).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from panollava.data.dataset import REFERENCE_MODES, drop_missing_references, is_missing_text, sample_id_for
from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metrics import prestart_meteor, score_captions
from panollava.metrics.names import PER_SAMPLE_METRICS
from panollava.outputs.files import (
    PREDICTION_CHOICES,
    format_metrics_table,
    is_original_predictions_csv,
    read_json_lines,
    sha256_file,
    write_json_atomic,
    write_predictions,
)
from panollava.schema import EvaluationOptions, ReferenceMode

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedPredictions",
    "load_predictions",
    "read_predictions",
    "run_score",
]

PREDICTION_COLUMNS = ("prediction", "predict", "pred")
SINGLE_REFERENCE_COLUMNS = ("annotation", "reference", "ref", "ground_truth", "gt")
IMAGE_COLUMNS = ("url", "image", "image_path")


@dataclass
class LoadedPredictions:
    """A predictions file read into samples, and how.

    Attributes:
        records: One record per scored sample: ``sample_id``, ``prediction``, ``references`` (+ ``image``,
            ``query``, ``lines`` where the file has them).
        file_format: ``jsonl``, ``json``, ``csv`` or ``panollava-v1-csv`` (the original tool's predictions CSV).
        reference_mode: ``grouped`` (a sample's references together) or ``per_row`` (one reference per row).
        num_rows: Rows (CSV) or objects (JSONL) in the file.
        prediction_choice: ``single`` (one prediction per sample), ``first_row`` (a sample had several different
            predictions; its first row's was scored) or ``per_row`` (each row's prediction against its reference).
        predictions_set_aside: Rows whose prediction differs from the one scored for their sample.
        dropped_references: Where the empty or missing-value references that were dropped are (``"1967"``, or
            ``"5 #2"`` for a JSON list).
    """

    records: list[dict[str, Any]]
    file_format: str
    reference_mode: str = EvaluationOptions.reference_mode
    num_rows: int = 0
    prediction_choice: str = "single"
    predictions_set_aside: int = 0
    dropped_references: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The ``dataset`` section of ``metrics.json`` (without the path)."""
        return {
            "format": self.file_format, "reference_mode": self.reference_mode, "num_samples": len(self.records),
            "num_rows": self.num_rows, "prediction_choice": self.prediction_choice,
            "predictions_set_aside": self.predictions_set_aside, "dropped_references": self.dropped_references,
            "references_sha256": references_digest(self.records),
        }


def references_digest(records: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of the sorted (image, query, reference) triples (sample id when there is no image/query).

    The same references give the same digest whatever the predictions, the file format or the reference mode, so
    ``compare`` can tell whether two scored files used the same references.
    """
    triples = sorted(
        (str(r.get("image", "")), str(r.get("query", r["sample_id"] if "image" not in r else "")), ref)
        for r in records for ref in r["references"]
    )
    return hashlib.sha256(json.dumps(triples, ensure_ascii=False).encode()).hexdigest()


def _apply_policy(
    path: Path, samples: dict[str, list[tuple[int | str, object]]], where: str
) -> tuple[dict[str, list[tuple[int | str, str]]], list[str]]:
    """The empty-reference policy of the whole tool (:func:`panollava.data.dataset.drop_missing_references`)."""
    kept = drop_missing_references(path, samples, where)
    dropped = [str(place) for name, refs in samples.items() for place, text in refs if is_missing_text(text)]
    return kept, dropped


def _load_jsonl(path: Path) -> LoadedPredictions:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"'{path}' is not valid JSON: {exc}") from exc
        numbered = list(enumerate(items, start=1))
        where = "item"
    else:
        numbered = read_json_lines(path)
        where = "line"
    records = []
    places: dict[str, list[tuple[int | str, object]]] = {}
    for number, item in numbered:
        if not isinstance(item, dict):
            raise InvalidInputError(
                f"'{path}' {where} {number}: expected a JSON object, found {type(item).__name__}"
            )
        missing = [k for k in ("prediction",) if k not in item]
        if "references" not in item and "reference" not in item:
            missing.append("references")
        if missing:
            raise InvalidInputError(
                f"'{path}' {where} {number} lacks {', '.join(missing)} (found keys: "
                f"{', '.join(sorted(item))}); each object needs sample_id, prediction (a string, '' for an "
                "empty caption) and references (a list)"
            )
        refs = item.get("references", item.get("reference"))
        if isinstance(refs, str) or refs is None:
            refs = [refs]
        if not isinstance(item["prediction"], str):
            raise InvalidInputError(
                f"'{path}' {where} {number}: prediction must be a string ('' for an empty caption), found "
                f"{item['prediction']!r}"
            )
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) or r is None for r in refs):
            raise InvalidInputError(
                f"'{path}' {where} {number}: references must be a non-empty list of strings, found {refs!r}"
            )
        if "query" in item and is_missing_text(item["query"]):
            raise InvalidInputError(
                f"'{path}' {where} {number}: query is {item['query']!r}; an empty query cannot have been asked. "
                "Fill it in or delete the sample"
            )
        record = dict(item)
        record["sample_id"] = str(item.get("sample_id", number))
        record["references"] = refs
        name = f"sample {record['sample_id']!r} ({where} {number})"
        places[name] = [(f"{number} #{k}" if len(refs) > 1 else number, r) for k, r in enumerate(refs, start=1)]
        record["_name"] = name
        records.append(record)
    kept, dropped = _apply_policy(path, places, where)
    for record in records:
        record["references"] = [text for _, text in kept[record.pop("_name")]]
    fmt = "json" if where == "item" else "jsonl"
    return LoadedPredictions(records, fmt, num_rows=len(numbered), dropped_references=dropped)


def _pick(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str | None]]]]:
    """Header and (first physical line, row) of every non-blank record."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        columns: list[str] = []
        numbered: list[tuple[int, dict[str, str | None]]] = []
        end = 0
        try:
            for cells in reader:  # physical line numbers (blank lines counted), as every message names them
                start, end = end + 1, reader.line_num
                if not cells:
                    continue
                if not columns:
                    columns = cells
                    continue
                padded = cells + [None] * (len(columns) - len(cells))  # type: ignore[list-item]
                numbered.append((start, dict(zip(columns, padded))))
        except csv.Error as exc:
            raise InvalidInputError(
                f"'{path}' line {end + 1} could not be parsed: {exc}. Check the quoting of that line"
            ) from None
    return columns, numbered


def _load_csv(path: Path, references_column: str | None, reference_mode: str) -> LoadedPredictions:
    columns, numbered = _read_csv_rows(path)
    found = ", ".join(columns) or "none"
    original = is_original_predictions_csv(columns)
    prediction_col = _pick(columns, PREDICTION_COLUMNS)
    if prediction_col is None:
        raise InvalidInputError(
            f"'{path}' has no prediction column (looked for {', '.join(PREDICTION_COLUMNS)}; found: {found})"
        )
    json_refs = False
    if references_column is not None:
        if references_column not in columns:
            raise InvalidInputError(
                f"'{path}' has no column {references_column!r} (--references_column); found: {found}"
            )
        ref_col = references_column
        json_refs = ref_col.lower() == "references"
    elif _pick(columns, ("references",)) is not None:
        ref_col, json_refs = _pick(columns, ("references",)), True  # type: ignore[assignment]
    else:
        ref_col = _pick(columns, SINGLE_REFERENCE_COLUMNS)  # type: ignore[assignment]
        if ref_col is None:
            raise InvalidInputError(
                f"'{path}' has no reference column (looked for 'references' (a JSON list) or one of "
                f"{', '.join(SINGLE_REFERENCE_COLUMNS)}; found: {found}); pass --references_column"
            )
    if json_refs and reference_mode == "per_row":
        raise InvalidInputError(
            f"'{path}': --reference_mode per_row scores one reference per row, but column {ref_col!r} holds a list "
            "of references per row; leave --reference_mode at grouped for this file"
        )
    # the original tool's sample_id numbers rows, not samples: its samples are (image_path, original_query)
    id_col = None if original else _pick(columns, ("sample_id",))
    image_col = "image_path" if original else _pick(columns, IMAGE_COLUMNS)
    query_col = "original_query" if original else _pick(columns, ("query",))
    if original:
        logger.info(
            "'%s' is a predictions CSV of the original PanoLLaVA tool (one row per reference): rows are grouped "
            "into (image_path, original_query) samples", path,
        )

    def key_of(i: int, row: dict[str, str]) -> tuple[str, ...]:
        if id_col is not None:
            return (row[id_col],)
        parts = tuple(row[c] for c in (image_col, query_col) if c is not None)
        return parts if parts else (str(i),)

    if id_col is None and image_col is None and query_col is None and not json_refs:
        logger.warning(
            "'%s' has no sample_id, url/image or query column: every row is a sample with one reference", path
        )
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for i, (line, row) in enumerate(numbered):
        if any(v is None for v in row.values()):
            raise InvalidInputError(f"'{path}' line {line}: the row has fewer cells than the header")
        key = key_of(i, row)  # type: ignore[arg-type]
        prediction = row[prediction_col]
        if query_col is not None and is_missing_text(row[query_col]):
            raise InvalidInputError(
                f"'{path}' line {line}: column {query_col!r} is empty or a missing-value marker such as 'nan'; an "
                "empty query cannot have been asked. Fill it in or delete the row"
            )
        if json_refs:
            try:
                refs = json.loads(row[ref_col])  # type: ignore[arg-type]
            except (json.JSONDecodeError, TypeError) as exc:
                raise InvalidInputError(
                    f"'{path}' line {line}: column {ref_col!r} must hold a JSON list of strings, found "
                    f"{row[ref_col]!r}"
                ) from exc
            if isinstance(refs, str) or refs is None:
                refs = [refs]
            if not isinstance(refs, list) or not all(isinstance(r, str) or r is None for r in refs):
                raise InvalidInputError(
                    f"'{path}' line {line}: column {ref_col!r} must be a JSON list of strings"
                )
            places: list[tuple[int | str, object]] = [
                (f"{line} #{k}" if len(refs) > 1 else line, r) for k, r in enumerate(refs, start=1)
            ]
        elif original:  # its sample_id numbers the rows: name it beside the physical line
            places = [(f"{line} (sample_id {row.get('sample_id')})", row[ref_col])]
        else:
            places = [(line, row[ref_col])]
        group = groups.get(key)
        if group is None:
            record: dict[str, Any] = {
                "sample_id": row[id_col] if id_col is not None else (
                    sample_id_for(*key) if original else str(i)),  # type: ignore[misc]
                "prediction": prediction,
                "_places": list(places),
                "_rows": [(line, row.get("sample_id"), prediction, places)],
                "_set_aside": 0,
            }
            if image_col is not None:
                record["image"] = row[image_col]
            if query_col is not None:
                record["query"] = row[query_col]
            groups[key] = record
        else:
            if group["prediction"] != prediction:
                if not original and reference_mode == "grouped":
                    raise InvalidInputError(
                        f"'{path}' lines {group['_rows'][0][0]} and {line} belong to the same sample {key!r} but "
                        f"have different predictions ({group['prediction']!r} vs {prediction!r}); one prediction "
                        "per sample is scored (--reference_mode per_row scores each row against its own reference)"
                    )
                group["_set_aside"] += 1
            group["_places"].extend(places)
            group["_rows"].append((line, row.get("sample_id"), prediction, places))

    def name_of(record: dict[str, Any]) -> str:
        where = ", ".join(f"{c} {record[k]!r}" for c, k in ((image_col, "image"), (query_col, "query")) if c)
        return f"sample {record['sample_id']!r}" + (f" ({where})" if where else "")

    named = {name_of(r): r for r in groups.values()}
    kept, dropped = _apply_policy(path, {n: r["_places"] for n, r in named.items()}, "line")
    records: list[dict[str, Any]] = []
    several = sum(1 for r in named.values() if r["_set_aside"])
    set_aside = sum(r["_set_aside"] for r in named.values())
    for name, group in named.items():
        kept_places = {place for place, _ in kept[name]}
        base = {k: group[k] for k in ("image", "query") if k in group}
        if reference_mode == "per_row":
            for line, row_id, prediction, places in group["_rows"]:
                refs = [str(text) for place, text in places if place in kept_places]
                if not refs:
                    continue  # this row's reference was empty: the row is dropped (the policy warned)
                sample_id = row_id if original and row_id not in (None, "") else f"{group['sample_id']}-r{line}"
                records.append({"sample_id": str(sample_id), **base, "prediction": prediction, "references": refs,
                                "lines": [line]})
        else:
            records.append({"sample_id": group["sample_id"], **base, "prediction": group["prediction"],
                            "references": [text for _, text in kept[name]],
                            "lines": [row[0] for row in group["_rows"]]})
    if reference_mode == "per_row":
        choice = "per_row"
    elif set_aside:
        choice = "first_row"
        logger.warning(
            "'%s': %d of %d samples carry several different predictions (%d rows; the original tool generated one "
            "caption per reference row). Scored: the first row's prediction of each sample against all of its "
            "references; set aside: %d predictions on other rows. --reference_mode per_row scores each row's "
            "prediction against its own reference instead (the original tool's protocol)",
            path, several, len(named), len(numbered), set_aside,
        )
    else:
        choice = "single"
    fmt = "panollava-v1-csv" if original else "csv"
    return LoadedPredictions(records, fmt, reference_mode, len(numbered), choice,
                             set_aside if reference_mode == "grouped" else 0, dropped)


def read_predictions(
    path: str | Path, references_column: str | None = None, reference_mode: str = EvaluationOptions.reference_mode
) -> LoadedPredictions:
    """Read a predictions file into samples, applying the tool's one empty-reference policy.

    Args:
        path: ``.jsonl`` (one object per line), ``.json`` (a list of objects) or ``.csv``. A CSV holds a
            prediction column (``prediction``) and either ``references`` (a JSON list per row) or one
            reference per row (``annotation``/``reference``); rows sharing ``sample_id`` (or else
            ``url``/``image`` + ``query``) are one sample with several references, and must agree on the
            prediction. The original PanoLLaVA tool's ``*_predictions_*.csv`` (``sample_id, image_path,
            original_query, prediction, reference, ...``, one row per reference, a caption generated per row) is
            recognised: its rows are grouped by (``image_path``, ``original_query``), and a sample whose rows carry
            different predictions is scored with its first row's (a warning counts the others).
        references_column: CSV column with the references (default: detected).
        reference_mode: ``grouped`` (default) or ``per_row``: each row of a one-reference-per-row CSV is a sample
            scored with its own prediction against its own reference (the original tool's protocol).

    Returns:
        The records and how they were formed (see :class:`LoadedPredictions`). Empty or missing-value
        references (``''``, ``nan``, ``null``, ...) are dropped with a warning naming their lines.

    Raises:
        InputNotFoundError: The file does not exist.
        InvalidInputError: Unknown format, missing columns/keys, an empty query, a sample with no reference left,
            or inconsistent rows (named by line).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(
            f"predictions file not found: '{path}'. Pass the predictions.jsonl written by "
            "'panollava-cli test' or a CSV with prediction and reference columns"
        )
    if reference_mode not in REFERENCE_MODES:
        raise InvalidInputError(f"--reference_mode must be one of {', '.join(REFERENCE_MODES)}, got {reference_mode!r}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        if reference_mode == "per_row":
            raise InvalidInputError(
                f"'{path}': --reference_mode per_row applies to CSVs with one reference per row; a {suffix} file "
                "holds one sample with its references per object. Leave --reference_mode at grouped"
            )
        loaded = _load_jsonl(path)
    elif suffix == ".csv":
        loaded = _load_csv(path, references_column, reference_mode)
    else:
        raise InvalidInputError(
            f"'{path}': expected a .jsonl, .json or .csv predictions file, found '{suffix}'"
        )
    if not loaded.records:
        raise InvalidInputError(f"'{path}' holds no samples")
    seen: dict[str, dict[str, Any]] = {}
    for record in loaded.records:
        previous = seen.setdefault(record["sample_id"], record)
        if previous is not record:
            raise InvalidInputError(
                f"'{path}': sample_id {record['sample_id']!r} appears twice; each sample must be listed once"
            )
    return loaded


def load_predictions(
    path: str | Path, references_column: str | None = None, reference_mode: str = EvaluationOptions.reference_mode
) -> list[dict[str, Any]]:
    """The records of :func:`read_predictions` (one per sample: ``sample_id``, ``prediction``, ``references``)."""
    return read_predictions(path, references_column, reference_mode).records


def _write_scored(
    output_dir: Path, records: list[dict[str, Any]], per_sample: dict[str, dict[str, Any]]
) -> Path:
    scored = [dict(r, scores={k: per_sample.get(r["sample_id"], {}).get(k) for k in PER_SAMPLE_METRICS}) for r in records]
    return write_predictions(output_dir, scored, stem="predictions_scored")[0]


def run_score(
    predictions: str,
    output_dir: str,
    references_column: str | None = None,
    *,
    reference_mode: ReferenceMode = EvaluationOptions.reference_mode,
    tokenizer: Literal["auto", "python", "java"] = "auto",
    meteor_timeout_s: float = 300.0,
    secondary: bool = False,
    strict_metrics: bool = EvaluationOptions.strict_metrics,
) -> Path:
    """Score a predictions file and write ``metrics.json`` (and the per-sample scores) into ``output_dir``.

    Args:
        predictions: ``predictions.jsonl`` / ``.json`` / ``.csv`` (see :func:`load_predictions`).
        output_dir: Folder for ``metrics.json``, ``predictions_scored.jsonl`` and ``predictions_scored.csv``.
        references_column: CSV column with the references (default: detected).
        reference_mode: ``grouped`` or ``per_row`` (one-reference-per-row CSVs only; see
            :func:`read_predictions`). ``metrics.json`` records it under ``dataset``, with the number of samples
            and of rows and which prediction was scored.
        tokenizer: PTB tokenizer: ``auto``, ``python`` or ``java``.
        meteor_timeout_s: Seconds METEOR may take before its process is killed (METEOR is then null).
        secondary: Also compute torchmetrics BLEU-4/ROUGE-L on PTB tokens (imports torch: a few seconds more).
        strict_metrics: Treat a metric unavailable here (METEOR without Java, SPICE) as a failure.

    Returns:
        The path of ``metrics.json``.

    Raises:
        InputNotFoundError: ``predictions`` does not exist.
        InvalidInputError: Malformed input (the message names the file, line and columns).
        MetricFailedError: A metric raised (or, with ``strict_metrics``, is unavailable); raised after
            ``metrics.json`` and the scored predictions were written, with the metric null and its reason.
    """
    prestart_meteor(shutil.which("java"))  # the JVM boots while the file is read and tokenized
    source = Path(predictions).expanduser().resolve()
    loaded = read_predictions(source, references_column, reference_mode)
    records = loaded.records
    out = Path(output_dir).expanduser().resolve()
    scores = score_captions(
        {r["sample_id"]: r["prediction"] for r in records},
        {r["sample_id"]: r["references"] for r in records},
        tokenizer=tokenizer,
        meteor_timeout_s=meteor_timeout_s,
        secondary=secondary,
    )
    metrics = scores.to_metrics_json()
    source_sha256 = sha256_file(source)
    metrics["source"] = {"predictions": str(source), "sha256": source_sha256}
    # what was scored: compare warns when two rows differ in reference mode, prediction choice or references
    metrics["dataset"] = {"path": str(source), **loaded.describe()}
    metrics_path = out / "metrics.json"
    try:
        write_json_atomic(metrics_path, metrics)
        scored_path = _write_scored(out, records, scores.per_sample)
    except OSError as exc:  # name the file (a failed write(2) on an open file carries no name)
        if exc.filename is None:
            exc.filename = str(metrics_path if not metrics_path.exists() else out / "predictions_scored.jsonl")
        raise

    choice = PREDICTION_CHOICES[loaded.prediction_choice]
    print(f"📊 Metrics on {scores.num_samples} samples from {loaded.num_rows} rows ({source.name}, "
          f"reference_mode {loaded.reference_mode}: {choice}; tokenizer {scores.tokenizer}):")
    print(format_metrics_table(metrics))
    for name, value in scores.secondary.items():
        print(f"  {name} {value:.4f}  (secondary)")
    cider = {sid: values["cider"] for sid, values in scores.per_sample.items() if values["cider"] is not None}
    ranked = sorted((r for r in records if r["sample_id"] in cider), key=lambda r: cider[r["sample_id"]])
    if ranked:
        print("Lowest CIDEr-D samples:")
        for r in ranked[:3]:
            print(f"  {r['sample_id']}: {cider[r['sample_id']]:.3f}  {r['prediction'][:70]!r}")
    for note in scores.notes:
        print(f"note: {note}")
    print(f"📁 {metrics_path}\n📁 {scored_path}")
    scores.raise_for_failures(strict=strict_metrics, written=[str(metrics_path), str(scored_path)])
    return metrics_path
