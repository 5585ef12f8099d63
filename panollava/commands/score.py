"""``panollava-cli score``: caption metrics for an existing predictions file, without a model.

Reads ``predictions.jsonl`` (one object per sample: ``sample_id``, ``prediction``, ``references``) or a CSV,
scores it with :func:`panollava.metrics.score_captions` and writes, into the output folder:

- ``metrics.json``: the official metrics as top-level numbers (``null`` + reason when unavailable), how they
  were computed, and which file was scored;
- ``predictions_scored.jsonl`` / ``predictions_scored.csv``: the input records plus per-sample ``scores``
  (``bleu_4``, ``cider``, ``rouge_l``, ``meteor``), so the worst samples can be found.

Light module: neither torch, lightning nor transformers is imported (unless secondary metrics are requested).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError

logger = logging.getLogger(__name__)

__all__ = ["load_predictions", "run_score"]

PREDICTION_COLUMNS = ("prediction", "predict", "pred")
SINGLE_REFERENCE_COLUMNS = ("annotation", "reference", "ref", "ground_truth", "gt")
IMAGE_COLUMNS = ("url", "image", "image_path")
SCORE_KEYS = ("bleu_4", "cider", "rouge_l", "meteor")


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"'{path}' is not valid JSON: {exc}") from exc
        numbered = list(enumerate(items, start=1))
        where = "item"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"'{path}' line {number} is not valid JSON: {exc}") from exc
        where = "line"
    records = []
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
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(item["prediction"], str):
            raise InvalidInputError(
                f"'{path}' {where} {number}: prediction must be a string ('' for an empty caption), found "
                f"{item['prediction']!r}"
            )
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise InvalidInputError(
                f"'{path}' {where} {number}: references must be a non-empty list of strings, found {refs!r}"
            )
        record = dict(item)
        record["sample_id"] = str(item.get("sample_id", number))
        record["references"] = refs
        records.append(record)
    return records


def _pick(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def _load_csv(path: Path, references_column: str | None) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        columns: list[str] = []
        numbered: list[tuple[int, dict[str, str | None]]] = []
        end = 0
        for cells in reader:  # physical line numbers (blank lines counted), as every message names them
            start, end = end + 1, reader.line_num
            if not cells:
                continue
            if not columns:
                columns = cells
                continue
            padded = cells + [None] * (len(columns) - len(cells))  # type: ignore[list-item]
            numbered.append((start, dict(zip(columns, padded))))
    found = ", ".join(columns) or "none"
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
    id_col = _pick(columns, ("sample_id",))
    image_col = _pick(columns, IMAGE_COLUMNS)
    query_col = _pick(columns, ("query",))

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
        key = key_of(i, row)  # type: ignore[arg-type]
        prediction = row[prediction_col]
        if prediction is None:
            raise InvalidInputError(f"'{path}' line {line}: the row has fewer cells than the header")
        if json_refs:
            try:
                refs = json.loads(row[ref_col])
            except (json.JSONDecodeError, TypeError) as exc:
                raise InvalidInputError(
                    f"'{path}' line {line}: column {ref_col!r} must hold a JSON list of strings, found "
                    f"{row[ref_col]!r}"
                ) from exc
            if isinstance(refs, str):
                refs = [refs]
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise InvalidInputError(
                    f"'{path}' line {line}: column {ref_col!r} must be a JSON list of strings"
                )
        else:
            if not (row[ref_col] or "").strip():
                raise InvalidInputError(
                    f"'{path}' line {line}: column {ref_col!r} is empty; an empty reference is never scored. "
                    "Fill it in or delete the row"
                )
            refs = [row[ref_col]]
        group = groups.get(key)
        if group is None:
            record: dict[str, Any] = {
                "sample_id": row[id_col] if id_col is not None else str(i),
                "prediction": prediction,
                "references": list(refs),
                "_line": line,
            }
            if image_col is not None:
                record["image"] = row[image_col]
            if query_col is not None:
                record["query"] = row[query_col]
            groups[key] = record
        else:
            if group["prediction"] != prediction:
                raise InvalidInputError(
                    f"'{path}' lines {group['_line']} and {line} belong to the same sample {key!r} but have "
                    f"different predictions ({group['prediction']!r} vs {prediction!r}); one prediction per "
                    "sample is scored"
                )
            group["references"].extend(refs)
    records = []
    for record in groups.values():
        line = record.pop("_line")
        if not record["references"]:
            raise InvalidInputError(
                f"'{path}': sample {record['sample_id']!r} (line {line}) has no non-empty reference"
            )
        records.append(record)
    return records


def load_predictions(path: str | Path, references_column: str | None = None) -> list[dict[str, Any]]:
    """Read a predictions file into records with ``sample_id``, ``prediction`` and ``references``.

    Args:
        path: ``.jsonl`` (one object per line), ``.json`` (a list of objects) or ``.csv``. A CSV holds a
            prediction column (``prediction``) and either ``references`` (a JSON list per row) or one
            reference per row (``annotation``/``reference``); rows sharing ``sample_id`` (or else
            ``url``/``image`` + ``query``) are one sample with several references, and must agree on the
            prediction.
        references_column: CSV column with the references (default: detected).

    Returns:
        One record per sample (input order); extra input fields are kept.

    Raises:
        InputNotFoundError: The file does not exist.
        InvalidInputError: Unknown format, missing columns/keys, or inconsistent rows (named by line).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(
            f"predictions file not found: '{path}'. Pass the predictions.jsonl written by "
            "'panollava-cli test' or a CSV with prediction and reference columns"
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = _load_jsonl(path)
    elif suffix == ".csv":
        records = _load_csv(path, references_column)
    else:
        raise InvalidInputError(
            f"'{path}': expected a .jsonl, .json or .csv predictions file, found '{suffix}'"
        )
    if not records:
        raise InvalidInputError(f"'{path}' holds no samples")
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        previous = seen.setdefault(record["sample_id"], record)
        if previous is not record:
            raise InvalidInputError(
                f"'{path}': sample_id {record['sample_id']!r} appears twice; each sample must be listed once"
            )
    return records


def _write_scored(
    output_dir: Path, records: list[dict[str, Any]], per_sample: dict[str, dict[str, Any]]
) -> Path:
    from panollava.report import write_predictions

    scored = [dict(r, scores={k: per_sample.get(r["sample_id"], {}).get(k) for k in SCORE_KEYS}) for r in records]
    return write_predictions(output_dir, scored, stem="predictions_scored")[0]


def run_score(
    predictions: str,
    output_dir: str,
    references_column: str | None = None,
    *,
    tokenizer: str = "auto",
    meteor_timeout_s: float = 300.0,
    secondary: bool = False,
    strict_metrics: bool = False,
) -> Path:
    """Score a predictions file and write ``metrics.json`` (and the per-sample scores) into ``output_dir``.

    Args:
        predictions: ``predictions.jsonl`` / ``.json`` / ``.csv`` (see :func:`load_predictions`).
        output_dir: Folder for ``metrics.json``, ``predictions_scored.jsonl`` and ``predictions_scored.csv``.
        references_column: CSV column with the references (default: detected).
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
    from panollava.metrics import prestart_meteor, score_captions
    from panollava.report import format_metrics_table, sha256_file, write_json_atomic

    prestart_meteor(shutil.which("java"))  # the JVM boots while the file is read and tokenized
    source = Path(predictions).expanduser().resolve()
    records = load_predictions(source, references_column)
    out = Path(output_dir).expanduser().resolve()
    scores = score_captions(
        {r["sample_id"]: r["prediction"] for r in records},
        {r["sample_id"]: r["references"] for r in records},
        tokenizer=tokenizer,
        meteor_timeout_s=meteor_timeout_s,
        secondary=secondary,
    )
    metrics = scores.to_metrics_json()
    metrics["source"] = {"predictions": str(source), "sha256": sha256_file(source)}
    metrics_path = out / "metrics.json"
    try:
        write_json_atomic(metrics_path, metrics)
        scored_path = _write_scored(out, records, scores.per_sample)
    except OSError as exc:  # name the file (a failed write(2) on an open file carries no name)
        if exc.filename is None:
            exc.filename = str(metrics_path if not metrics_path.exists() else out / "predictions_scored.jsonl")
        raise

    print(f"📊 Metrics on {scores.num_samples} samples ({source.name}, tokenizer {scores.tokenizer}):")
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
