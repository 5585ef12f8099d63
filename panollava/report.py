"""Evaluation outputs: ``predictions.jsonl``, ``predictions.csv`` and ``metrics.json``, written atomically.

Every file is written to a temporary file in the output directory and renamed into place, so a crash never leaves a
half-written result behind. Light module: no torch / lightning imports.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PER_SAMPLE_KEYS = ("bleu_4", "cider", "rouge_l", "meteor")
RECORD_KEYS = ("sample_id", "index", "image", "image_path", "query", "prediction", "references")
"""Keys of a per-sample record in ``predictions.jsonl``, in order (``scores`` follows when scored)."""


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
    from panollava.errors import InvalidInputError

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
            item["scores"] = {k: per_sample[rec["sample_id"]].get(k) for k in PER_SAMPLE_KEYS}
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
    writer.writerow(["sample_id", "image", "query", "prediction", "references", *PER_SAMPLE_KEYS])
    for r in records:
        scores = r.get("scores") or {}
        writer.writerow(
            [r["sample_id"], r.get("image", ""), r.get("query", ""), r["prediction"],
             json.dumps(r.get("references", []), ensure_ascii=False)]
            + ["" if scores.get(k) is None else scores[k] for k in PER_SAMPLE_KEYS]
        )
    csv_path = output_dir / f"{stem}.csv"
    write_text_atomic(csv_path, buf.getvalue())
    return jsonl, csv_path


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A small text table of the official metrics."""
    rows = []
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice"):
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
    import platform
    from importlib import metadata as importlib_metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions
