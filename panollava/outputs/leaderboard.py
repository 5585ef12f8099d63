"""A leaderboard of evaluations, with the sampling noise of each number and of each difference.

:func:`run_compare` takes evaluation folders (``metrics.json`` + ``predictions.jsonl``, as ``test`` writes them;
``score``'s ``predictions_scored.jsonl`` also works) or run directories (then their latest evaluation, found under
``./eval_results`` in the layout ``test`` uses by default), and writes one row per evaluation:

- its run, checkpoint rule and checkpoint name, the corpus metrics, the difference from the baseline row (the first,
  or ``baseline``);
- a 95 % percentile bootstrap interval of CIDEr-D and METEOR, resampling *panoramas* (the ``image_path`` or
  ``image`` of each sample: the queries of one panorama are correlated, so they are resampled together) with
  CIDEr-D's document frequencies held fixed (:mod:`panollava.metrics.bootstrap`);
- a paired cluster-bootstrap p-value against the baseline, on the samples (``sample_id``) both rows share, Holm's
  correction across the rows compared with the baseline, and a verdict in words (significant or not at
  :data:`~panollava.metrics.bootstrap.SIGNIFICANCE_LEVEL`);
- for evaluations judged by ``panollava-cli judge`` (a ``judge`` block in metrics.json): the mean per-sample judge
  score with the same panorama-cluster interval, its failure rate beside it, and a paired p-value against the
  baseline over the samples both have a judge score for, Holm-corrected with the other rows. A row without a judge
  block shows no judge value; rows judged by another judge (model, backend, rubric, judge settings) are warned of.

Rows scored on another dataset (sha256, or the references' digest that ``score`` records), with another reference
mode, another choice of prediction per sample or other decoding settings are not comparable: each such difference
is a warning. A folder of the original PanoLLaVA tool (``*_predictions_*.csv``, no per-sample scores) is recognised
and refused with the ``score`` command that turns it into an evaluation folder. Needs numpy, never torch
(the decoding defaults come from :mod:`panollava.schema`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError, PanoLLaVAError
from panollava.judge.scores import JudgeScores, judge_scores_from_metrics
from panollava.metrics.bootstrap import (
    DEFAULT_RESAMPLES,
    SIGNIFICANCE_LEVEL,
    BootstrapInterval,
    bootstrap_interval,
    holm_adjust,
    paired_bootstrap_pvalue,
)
from panollava.metrics.names import METRIC_LABELS, PER_SAMPLE_METRICS_SHOWN
from panollava.outputs.files import (
    PREDICTION_CHOICES,
    is_original_predictions_csv,
    read_json_object,
    read_prediction_records,
    sha256_file,
    write_text_atomic,
)
from panollava.outputs.report_html import format_judge_score, render_page
from panollava.schema import GENERATION_COMPUTE_OPTIONS, GenerationSettings, check_settings

logger = logging.getLogger(__name__)

__all__ = [
    "CI_METRICS",
    "LEADERBOARD_METRICS",
    "PREDICTION_FILES",
    "Evaluation",
    "find_evaluation",
    "load_evaluation",
    "panorama_key",
    "run_compare",
]

#: Corpus metrics shown per row, with their labels.
LEADERBOARD_METRICS: dict[str, str] = {k: METRIC_LABELS[k] for k in PER_SAMPLE_METRICS_SHOWN}
#: Metrics that get a bootstrap interval and a paired p-value.
CI_METRICS: tuple[str, ...] = ("cider", "meteor")
#: The LLM judge's column (``panollava-cli judge``): its label, and the digits its scores (20-100) are shown with.
JUDGE_LABEL = "LLM judge"
_JUDGE_DIGITS = 2
_OTHER_JUDGE = "other judge: not comparable"
#: The per-sample files of an evaluation folder, in the order they are looked for (``test``'s, then ``score``'s).
PREDICTION_FILES: tuple[str, ...] = ("predictions.jsonl", "predictions_scored.jsonl")
# decoding entries that describe how generation ran, not what it computes
# the judge's figures of a row (all None without a judge block); p_judge_holm, judge_significant and
# judge_verdict come with the other metrics' verdicts
_JUDGE_COLUMNS = (
    "judge", "judge_ci_low", "judge_ci_high", "judge_n", "judge_num_samples", "judge_num_failed",
    "judge_failure_rate", "judge_num_panoramas", "delta_judge", "paired_mean_delta_judge", "p_judge",
    "judge_paired_samples", "judge_paired_panoramas", "judge_comparable", "judge_backend", "judge_model",
    "judge_rubric_sha256",
)
_NOT_DECODING = frozenset({"path", "kv_cache", "attention", "fallback_reason", "compile_mode",
                           *GENERATION_COMPUTE_OPTIONS})
#: The decoding settings and their defaults, as the schema declares them (``generation.DecodeSettings``'s fields).
_DECODING_DEFAULTS = {f.name: f.default for f in fields(GenerationSettings)
                      if f.name not in GENERATION_COMPUTE_OPTIONS}
_SEED = 0


@dataclass
class Evaluation:
    """One evaluation folder, loaded.

    Attributes:
        folder: The evaluation folder (absolute).
        metrics: Its metrics.json content.
        scores: ``sample_id`` → per-sample scores, from its predictions file.
        picked: How the folder was found (for run directories: which evaluation was picked and why).
        clusters: ``sample_id`` → its panorama (``image_path``, else ``image``; the sample id itself when the
            record names no image), the unit the bootstrap resamples.
        judge: The judge scores of its metrics.json's ``judge`` block (None: not judged).
        predictions: The predictions file the scores were read from.
    """

    folder: Path
    metrics: dict[str, Any]
    scores: dict[str, dict[str, Any]]
    picked: str
    row: dict[str, Any] = field(default_factory=dict)
    clusters: dict[str, str] = field(default_factory=dict)
    judge: JudgeScores | None = None
    predictions: Path | None = None

    @property
    def without_image(self) -> int:
        """How many samples name no image (each is then its own cluster)."""
        return sum(1 for sid, key in self.clusters.items() if key == f"sample:{sid}")

    @property
    def run(self) -> str:
        """``experiment/stage/<crop>_<resampler>``, else the run directory's name, else the folder's name."""
        meta = self.metrics.get("metadata") or {}
        run_dir = (self.metrics.get("run") or {}).get("run_dir")
        if meta.get("experiment_name") and run_dir:
            return f"{meta['experiment_name']}/{Path(run_dir).parent.name}/{Path(run_dir).name}"
        return Path(run_dir).name if run_dir else self.folder.name

    @property
    def checkpoint(self) -> tuple[str, str]:
        """(rule, file name) of the evaluated checkpoint, ``("", "")`` when not recorded."""
        ckpt = self.metrics.get("checkpoint") or {}
        return str(ckpt.get("rule") or ""), Path(str(ckpt["path"])).name if ckpt.get("path") else ""


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "nothing"


def _score_first(csv_path: Path, folder: Path) -> str:
    """The message for a predictions CSV (e.g. the original tool's) given where an evaluation folder is expected."""
    what = "a predictions CSV"
    try:
        with csv_path.open(encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        header = []
    if is_original_predictions_csv(header):
        what = ("a predictions CSV of the original PanoLLaVA tool (one row per reference, original_query, "
                "image_path; no per-sample scores)")
    out = folder / f"{csv_path.stem}_scored"
    return (
        f"'{csv_path}' is {what}, not an evaluation folder (metrics.json + predictions.jsonl). Score it first: "
        f"panollava-cli score --predictions {csv_path} --output_dir {out} (add --reference_mode per_row for the "
        f"original tool's one-reference-per-row protocol), then pass '{out}' to compare"
    )


def find_evaluation(path: str | Path, cwd: str | Path | None = None) -> tuple[Path, str]:
    """The evaluation folder that ``path`` names, and how it was found.

    Args:
        path: An evaluation folder (holding metrics.json) or a run directory (holding checkpoint_metadata.json).
        cwd: Where ``eval_results/`` is looked for (default: the current directory).

    Returns:
        ``(folder, reason)``.

    Raises:
        InputNotFoundError: ``path`` is neither, or a run directory has no evaluation in the default layout.
    """
    folder = Path(path).expanduser().resolve()
    if folder.is_file() and folder.suffix.lower() == ".csv":
        raise InvalidInputError(_score_first(folder, folder.parent))
    if not folder.is_dir():
        raise InputNotFoundError(
            f"'{folder}' is not a folder; pass evaluation folders (metrics.json + predictions.jsonl, written by "
            "'panollava-cli test') or run directories"
        )
    if (folder / "metrics.json").is_file():
        return folder, "evaluation folder"
    originals = sorted(folder.glob("*_predictions_*.csv"))
    if originals and not (folder / "checkpoint_metadata.json").is_file():
        raise InvalidInputError(_score_first(originals[-1], folder))
    if not (folder / "checkpoint_metadata.json").is_file():
        raise InputNotFoundError(
            f"'{folder}' is neither an evaluation folder (no metrics.json) nor a run directory (no "
            f"checkpoint_metadata.json); found: {_listing(folder)}. Pass the folder that 'panollava-cli test' "
            "wrote, or the run directory that training wrote"
        )
    try:
        meta = json.loads((folder / "checkpoint_metadata.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"'{folder / 'checkpoint_metadata.json'}' is not valid JSON: {exc}") from exc
    experiment = meta.get("experiment_name") if isinstance(meta, dict) else None
    root = Path(cwd or Path.cwd()).resolve()
    base = root / "eval_results"
    # the layout of 'test' without --output_dir: eval_results/<experiment>/<stage>/<crop>_<resampler>/<ckpt stem>
    base = base / experiment / folder.parent.name / folder.name if experiment else base / folder.name
    candidates = []
    if base.is_dir():
        for sub in base.iterdir():
            metrics_path = sub / "metrics.json"
            if not metrics_path.is_file():
                continue
            try:
                recorded = (read_json_object(metrics_path).get("run") or {}).get("run_dir")
            except (InvalidInputError, AttributeError):
                recorded = None
            if recorded and Path(recorded).resolve() != folder:
                logger.info("skipping %s: it evaluated another run directory (%s)", sub, recorded)
                continue
            candidates.append((metrics_path.stat().st_mtime, sub))
    if not candidates:
        raise InputNotFoundError(
            f"run directory '{folder}' has no evaluation under '{base}' (where 'panollava-cli test --ckpt_dir "
            f"{folder}' writes by default when run from '{root}'). "
            "Run test first, run compare from the folder test ran in, or pass the evaluation folder itself"
        )
    candidates.sort()
    picked = candidates[-1][1]
    reason = (
        f"run directory {folder}: latest of {len(candidates)} evaluation(s) under {base} → {picked.name} "
        "(newest metrics.json)"
    )
    logger.info("compare: %s", reason)
    return picked, reason


def panorama_key(record: Mapping[str, Any]) -> str:
    """The bootstrap cluster of a per-sample record: its panorama.

    The record's ``image_path``, else its ``image``; a record naming neither is a cluster of its own
    (``sample:<sample_id>``). ``compare`` and ``judge`` resample these keys.
    """
    image = record.get("image_path") or record.get("image")
    return str(image) if image else f"sample:{record['sample_id']}"


def load_evaluation(path: str | Path, cwd: str | Path | None = None) -> Evaluation:
    """Find (see :func:`find_evaluation`) and read an evaluation: its metrics and per-sample scores.

    Raises:
        InputNotFoundError: No evaluation found, or no predictions file beside metrics.json.
        InvalidInputError: Malformed metrics.json, predictions file or judge block.
    """
    folder, picked = find_evaluation(path, cwd)
    metrics_path = folder / "metrics.json"
    metrics = read_json_object(metrics_path)
    predictions = next((folder / n for n in PREDICTION_FILES if (folder / n).is_file()), None)
    if predictions is None:
        raise InputNotFoundError(
            f"no predictions file in '{folder}' (looked for {', '.join(PREDICTION_FILES)}; found: "
            f"{_listing(folder)}): the per-sample scores are needed for the bootstrap"
        )
    records = read_prediction_records(predictions)
    scores = {str(r["sample_id"]): dict(r.get("scores") or {}) for r in records}
    clusters = {str(r["sample_id"]): panorama_key(r) for r in records}
    return Evaluation(folder=folder, metrics=metrics, scores=scores, picked=picked, clusters=clusters,
                      judge=judge_scores_from_metrics(metrics, folder), predictions=predictions)


def _decoding(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    decoding = metrics.get("decoding")
    if not isinstance(decoding, Mapping):
        return None
    values = {k: v for k, v in decoding.items() if k not in _NOT_DECODING}
    given = {k: bool(v) if isinstance(_DECODING_DEFAULTS[k], bool) else v
             for k, v in values.items() if k in _DECODING_DEFAULTS and v is not None}
    try:  # the schema's defaults fill keys an older metrics.json lacks (e.g. top_k); its validation normalises
        return check_settings({**_DECODING_DEFAULTS, **given}, "decoding")
    except PanoLLaVAError:  # a value the schema refuses: compare the raw entries
        return values


def _prediction_choice(dataset: Mapping[str, Any]) -> str:
    """Which prediction was scored: recorded by ``score``; ``test`` generates one per sample (per row in per_row)."""
    recorded = dataset.get("prediction_choice")
    if recorded:
        return str(recorded)
    return "per_row" if dataset.get("reference_mode") == "per_row" else "single"


def _protocol(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """How an evaluation showed the panoramas to its model, and its prompt (None where not recorded): from the
    settings it ran with, or, for a run of the original trainer, from the run itself."""
    settings = metrics.get("settings") or {}

    def value(key: str) -> Any:
        entry = settings.get(key)
        return entry.get("value") if isinstance(entry, Mapping) else None

    model = metrics.get("model") or {}
    if metrics.get("family") == "panollava-v1":
        views = model.get("views") if isinstance(model.get("views"), Mapping) else {}
        prompt = model.get("prompt") if isinstance(model.get("prompt"), Mapping) else {}
        return {"crop_strategy": "anyres_e2p", "fov_deg": views.get("fov_deg"),
                "overlap_ratio": views.get("overlap_ratio"), "num_views": None,
                "prompt_template": prompt.get("template"), "system_prompt": prompt.get("system") or ""}
    out = {key: value(key) for key in ("crop_strategy", "fov_deg", "overlap_ratio", "num_views")}
    out["prompt_template"] = value("prompt_template")
    out["system_prompt"] = value("system_prompt") or ""
    if out["crop_strategy"] == "resize":  # one whole-panorama image: no field of view, overlap or tiles
        out.update(fov_deg=None, overlap_ratio=None, num_views=None)
    return out


def _comparability_warnings(evals: Sequence[Evaluation], base: Evaluation) -> list[str]:
    warnings: list[str] = []

    def label(e: Evaluation) -> str:
        return f"row {e.row['row']} ({e.run}, {e.folder.name})"

    base_data = base.metrics.get("dataset") or {}
    base_dec = _decoding(base.metrics)
    for e in evals:
        if e is base:
            continue
        data = e.metrics.get("dataset") or {}
        if data.get("references_sha256") and base_data.get("references_sha256"):
            # 'score' records a digest of the references themselves (predictions files differ between systems)
            if data["references_sha256"] != base_data["references_sha256"]:
                warnings.append(
                    f"{label(e)} was scored against other references than the baseline (references digest "
                    f"{data['references_sha256'][:12]} vs {base_data['references_sha256'][:12]}); the numbers are "
                    "not comparable"
                )
        elif not data.get("sha256") or not base_data.get("sha256"):
            warnings.append(
                f"{label(e)}: dataset sha256 not recorded for it or for the baseline; cannot check that both were "
                "scored on the same data"
            )
        elif data["sha256"] != base_data["sha256"]:
            warnings.append(
                f"{label(e)} was scored on another dataset than the baseline: sha256 {data['sha256'][:12]} "
                f"({data.get('path')}) vs {base_data['sha256'][:12]} ({base_data.get('path')}); the numbers are not "
                "comparable"
            )
        if data.get("reference_mode") != base_data.get("reference_mode"):
            warnings.append(
                f"{label(e)} used reference_mode {data.get('reference_mode')!r}, the baseline "
                f"{base_data.get('reference_mode')!r}; the numbers are not comparable"
            )
        choice, base_choice = _prediction_choice(data), _prediction_choice(base_data)
        if choice != base_choice:
            warnings.append(
                f"{label(e)} scored {PREDICTION_CHOICES.get(choice, choice)}, the baseline scored "
                f"{PREDICTION_CHOICES.get(base_choice, base_choice)}"
                "; the numbers are not comparable"
            )
        protocol, base_protocol = _protocol(e.metrics), _protocol(base.metrics)
        differs = [f"{k} {protocol[k]!r} vs {base_protocol[k]!r}" for k in protocol
                   if protocol[k] is not None and base_protocol.get(k) is not None and protocol[k] != base_protocol[k]]
        if differs:
            warnings.append(f"{label(e)} saw the panoramas through another view protocol or prompt than the baseline "
                            f"({'; '.join(differs)}); the difference includes that, not only the model")
        dec = _decoding(e.metrics)
        if dec is None or base_dec is None:
            if dec is not base_dec:
                warnings.append(f"{label(e)}: decoding settings not recorded for it or for the baseline")
            continue
        diffs = [f"{k} {dec.get(k)!r} vs {base_dec.get(k)!r}" for k in sorted(set(dec) & set(base_dec))
                 if dec.get(k) != base_dec.get(k)]
        if diffs:
            warnings.append(f"{label(e)} decoded differently from the baseline ({'; '.join(diffs)})")
    for e in evals:
        failed = e.metrics.get("failed") or {}
        for key, reason in failed.items():
            warnings.append(f"{label(e)}: {key} failed ({reason})")
    warnings += _judge_warnings(evals, base, label)
    return warnings


def _judge_warnings(evals: Sequence[Evaluation], base: Evaluation, label: Any) -> list[str]:
    """Rows whose judge scores cannot be set beside the baseline's: not judged, judged on other predictions than
    the folder holds now, or by another judge (model, endpoint or local backend, rubric, images, judge decoding)."""
    if all(e.judge is None for e in evals):
        return []

    warnings = []
    for e in evals:
        if e.judge is None:
            what = "; no row gets a judge difference or p-value" if e is base else ""
            warnings.append(
                f"{label(e)} was not judged (no judge block in {e.folder / 'metrics.json'}): no judge score is shown "
                f"for it{what}. Run 'panollava-cli judge --eval_dir {e.folder}' with the judge of the other rows"
            )
            continue
        recorded = (e.judge.block.get("predictions") or {}).get("sha256")
        if recorded and e.predictions is not None and recorded != sha256_file(e.predictions):
            warnings.append(
                f"{label(e)}: its judge scores were computed on other predictions than '{e.predictions}' holds now "
                f"(sha256 {str(recorded)[:12]} recorded by the judge); judge the folder again"
            )
        if e is base or base.judge is None:
            continue
        mine, theirs = e.judge.identity, base.judge.identity
        diffs = [f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in mine if mine.get(k) != theirs.get(k)]
        if diffs:
            warnings.append(
                f"{label(e)} was judged differently from the baseline ({'; '.join(diffs)}); a different judge is a "
                "different ruler: the judge scores are not comparable"
            )
    return warnings


def _values(e: Evaluation, key: str, ids: Sequence[str] | None = None) -> list[float]:
    ids = list(e.scores) if ids is None else ids
    return [float(e.scores[i][key]) for i in ids if isinstance((e.scores.get(i) or {}).get(key), (int, float))]


def _fmt(value: Any, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _build_row(e: Evaluation, base: Evaluation, index: int, warnings: list[str], num_resamples: int) -> dict[str, Any]:
    rule, name = e.checkpoint
    row: dict[str, Any] = {
        "row": index, "run": e.run, "checkpoint_rule": rule, "checkpoint": name, "folder": str(e.folder),
        "picked": e.picked, "num_samples": e.metrics.get("num_samples", len(e.scores)),
        "dataset_sha256": (e.metrics.get("dataset") or {}).get("sha256"),
        "reference_mode": (e.metrics.get("dataset") or {}).get("reference_mode"),
        "baseline": e is base,
    }
    for key in LEADERBOARD_METRICS:
        value = e.metrics.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) else None
        base_value = base.metrics.get(key)
        row[f"delta_{key}"] = (
            row[key] - float(base_value) if row[key] is not None and isinstance(base_value, (int, float)) else None
        )
    shared = [sid for sid in e.scores if sid in base.scores]
    row["paired_samples"] = len(shared)
    row["num_panoramas"] = len(set(e.clusters.values()))
    row["paired_panoramas"] = len({base.clusters.get(sid, f"sample:{sid}") for sid in shared})
    row["prediction_choice"] = _prediction_choice(e.metrics.get("dataset") or {})
    if e.without_image:
        warnings.append(
            f"row {index} ({e.run}): {e.without_image} of {len(e.scores)} samples name no image; each of those is "
            "resampled on its own, which understates the noise if several of them show one panorama"
        )
    for key in CI_METRICS:
        ids = [i for i in e.scores if isinstance(e.scores[i].get(key), (int, float))]
        values = _values(e, key, ids)
        interval: BootstrapInterval | None = None
        if values:
            interval = bootstrap_interval(values, num_resamples=num_resamples, seed=_SEED,
                                          clusters=[e.clusters.get(i, f"sample:{i}") for i in ids])
        elif e.scores:
            warnings.append(f"row {index} ({e.run}): no per-sample {key} scores; no interval")
        row[f"{key}_ci_low"] = interval.low if interval else None
        row[f"{key}_ci_high"] = interval.high if interval else None
        row[f"{key}_sample_mean"] = interval.mean if interval else None
        row[f"p_{key}"] = None
        if e is base:
            continue
        both = [sid for sid in shared if isinstance(e.scores[sid].get(key), (int, float))
                and isinstance(base.scores[sid].get(key), (int, float))]
        row[f"paired_mean_delta_{key}"] = (
            sum(float(e.scores[i][key]) - float(base.scores[i][key]) for i in both) / len(both) if both else None
        )
        if both:
            row[f"p_{key}"] = paired_bootstrap_pvalue(
                _values(base, key, both), _values(e, key, both), num_resamples=num_resamples, seed=_SEED,
                clusters=[base.clusters.get(i, f"sample:{i}") for i in both],
            )
    if e is not base:
        if not shared:
            warnings.append(f"row {index} ({e.run}) shares no sample_id with the baseline: no paired p-value")
        elif len(shared) < max(len(e.scores), len(base.scores)):
            warnings.append(
                f"row {index} ({e.run}): the paired test uses the {len(shared)} samples it shares with the "
                f"baseline (it has {len(e.scores)}, the baseline {len(base.scores)})"
            )
    row.update(_judge_row(e, base, index, warnings, num_resamples))
    return row


def _judge_row(e: Evaluation, base: Evaluation, index: int, warnings: list[str], num_resamples: int
               ) -> dict[str, Any]:
    """The judge's figures of a row: the mean of its per-sample judge scores with their panorama-cluster interval,
    the failures, and against the baseline the difference and a paired p-value over the samples both judged.
    All None for a row without a judge block (nothing stands in for a missing judge); no difference and no p-value
    for a row judged by another judge than the baseline (``judge_comparable`` False: another ruler)."""
    row: dict[str, Any] = {k: None for k in _JUDGE_COLUMNS}
    judge = e.judge
    if judge is None:
        return row
    ids = list(judge.per_sample)
    row.update(
        judge_n=len(ids), judge_num_samples=len(ids) + len(judge.failed), judge_num_failed=len(judge.failed),
        judge_backend=judge.identity.get("backend"), judge_model=judge.identity.get("model"),
        judge_rubric_sha256=judge.identity.get("rubric_sha256"),
    )
    row["judge_failure_rate"] = len(judge.failed) / row["judge_num_samples"] if row["judge_num_samples"] else None
    if ids:
        interval = bootstrap_interval([judge.per_sample[i] for i in ids], num_resamples=num_resamples, seed=_SEED,
                                      clusters=[e.clusters.get(i, f"sample:{i}") for i in ids])
        row.update(judge=interval.mean, judge_ci_low=interval.low, judge_ci_high=interval.high,
                   judge_num_panoramas=interval.num_clusters)
    else:
        warnings.append(f"row {index} ({e.run}): the judge scored none of its {len(judge.failed)} samples")
    if e is base or base.judge is None:
        row["judge_comparable"] = True if e is base else None
        return row
    row["judge_comparable"] = judge.identity == base.judge.identity
    if not row["judge_comparable"]:
        return row  # the warning says how the judges differ
    theirs = base.judge.per_sample
    if row["judge"] is not None and theirs:
        row["delta_judge"] = row["judge"] - sum(theirs.values()) / len(theirs)
    both = [i for i in ids if i in theirs]
    row["judge_paired_samples"] = len(both)
    row["judge_paired_panoramas"] = len({base.clusters.get(i, f"sample:{i}") for i in both})
    if not both:
        warnings.append(f"row {index} ({e.run}): no sample was judged in both it and the baseline: no judge p-value")
        return row
    row["paired_mean_delta_judge"] = sum(judge.per_sample[i] - theirs[i] for i in both) / len(both)
    row["p_judge"] = paired_bootstrap_pvalue(
        [theirs[i] for i in both], [judge.per_sample[i] for i in both], num_resamples=num_resamples, seed=_SEED,
        clusters=[base.clusters.get(i, f"sample:{i}") for i in both],
    )
    if len(both) < max(len(ids), len(theirs)):
        warnings.append(
            f"row {index} ({e.run}): the paired judge test uses the {len(both)} samples both it and the baseline "
            f"have a judge score for (it has {len(ids)}, the baseline {len(theirs)}; a sample the judge failed on "
            "either side is left out)"
        )
    return row


def _ci(row: Mapping[str, Any], key: str) -> str:
    """``value [low, high]``: CIDEr-D's corpus value is the mean of its per-sample values; METEOR's interval is
    shown around the mean of its per-sample values (its corpus value, in its own column, aggregates differently)."""
    if row.get(f"{key}_ci_low") is None:
        return "n/a"
    return f"{_fmt(row[f'{key}_sample_mean'])} [{_fmt(row[f'{key}_ci_low'])}, {_fmt(row[f'{key}_ci_high'])}]"


def _delta(row: Mapping[str, Any], key: str) -> str:
    if key == "judge" and row.get("judge_n") is None:
        return "not judged"
    if row["baseline"]:
        return "baseline"
    if key == "judge" and row.get("judge_comparable") is False:
        return _OTHER_JUDGE
    text = _fmt(row.get(f"delta_{key}"), digits=_JUDGE_DIGITS if key == "judge" else 4, signed=True)
    if key in CI_METRICS or key == "judge":
        significant = row.get(f"{key}_significant")
        word = "" if significant is None else ("; significant" if significant else "; not significant")
        text += f" (p {_fmt_p(row.get(f'p_{key}'))}, Holm {_fmt_p(row.get(f'p_{key}_holm'))}{word})"
    return text


def _tested(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The figures with a paired test: CIDEr-D, METEOR, and the judge's score when some row was judged."""
    return (*CI_METRICS, "judge") if any(r.get("judge_n") is not None for r in rows) else CI_METRICS


def _label(key: str) -> str:
    return JUDGE_LABEL if key == "judge" else LEADERBOARD_METRICS[key]


def _add_verdicts(rows: Sequence[dict[str, Any]]) -> None:
    """Holm-adjust each metric's p-values across the rows compared with the baseline, and say what they mean."""
    compared = [r for r in rows if not r["baseline"]]
    base = next(r for r in rows if r["baseline"])
    tested = _tested(rows)
    for key in (*CI_METRICS, "judge"):
        for r in rows:
            r[f"p_{key}_holm"] = None
            r[f"{key}_significant"] = None
            r[f"{key}_verdict"] = "baseline" if r["baseline"] and key in tested else ""
    for key in tested:
        adjusted = holm_adjust([r.get(f"p_{key}") for r in compared])
        tests = sum(1 for a in adjusted if a is not None)
        label, digits = _label(key), _JUDGE_DIGITS if key == "judge" else 4
        for r, adj in zip(compared, adjusted):
            if adj is None:
                if key == "judge" and (r["judge_n"] is None or base["judge_n"] is None):
                    who = "this row" if r["judge_n"] is None else "the baseline"
                    r[f"{key}_verdict"] = f"{label}: no paired test ({who} was not judged)"
                elif key == "judge" and r["judge_comparable"] is False:
                    r[f"{key}_verdict"] = (f"{label}: no paired test (judged by another judge than the baseline; "
                                           "not comparable)")
                else:
                    what = "judged in both" if key == "judge" else "shared with the baseline"
                    r[f"{key}_verdict"] = f"{label}: no paired test (no sample {what})"
                continue
            r[f"p_{key}_holm"] = adj
            r[f"{key}_significant"] = significant = adj < SIGNIFICANCE_LEVEL
            delta = r.get(f"paired_mean_delta_{key}") or 0.0
            paired = "judge_paired" if key == "judge" else "paired"
            where = (f"paired over {r[f'{paired}_samples']} samples on {r[f'{paired}_panoramas']} panoramas, "
                     f"Holm-adjusted p {_fmt_p(adj)} over {tests} comparison{'s' if tests > 1 else ''}")
            if significant:
                r[f"{key}_verdict"] = (
                    f"{label} is significantly {'higher' if delta > 0 else 'lower'} than the baseline's "
                    f"(mean per-sample difference {delta:+.{digits}f}; {where} < {SIGNIFICANCE_LEVEL})"
                )
            else:
                r[f"{key}_verdict"] = (
                    f"{label}: no significant difference from the baseline (mean per-sample difference "
                    f"{delta:+.{digits}f}; {where} ≥ {SIGNIFICANCE_LEVEL}): within the sampling noise"
                )


def _verdict_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"row {r['row']} ({r['run']}): " + "; ".join(r[f"{k}_verdict"] for k in _tested(rows))
            for r in rows if not r["baseline"]]


def _judge_block(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's judge figures in the shape of a judge block, for :func:`panollava.outputs.report_html.format_judge_score`
    (the one wording of a judge score: always with its failure rate)."""
    ci = None if row["judge_ci_low"] is None else {"low": row["judge_ci_low"], "high": row["judge_ci_high"]}
    return {"score": row["judge"], "ci95": ci, "n": row["judge_n"], "num_samples": row["judge_num_samples"],
            "num_failed": row["judge_num_failed"], "failure_rate": row["judge_failure_rate"],
            "identity": {"model": row["judge_model"]}}


def _judge_text(row: Mapping[str, Any]) -> str:
    """``"65.50 [49.78, 80.62] (n 8 of 15, failed 7 = 46.7%; judge NAME)"``, or ``"not judged"``."""
    if row.get("judge_n") is None:
        return "not judged"

    return format_judge_score(_judge_block(row))


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ["#", "evaluation", "run", "checkpoint", "n", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D [95% CI]",
            "Δ CIDEr-D (p)", "METEOR per-sample mean [95% CI]", "Δ METEOR (p)"]
    judged = "judge" in _tested(rows)
    if judged:
        head += [f"{JUDGE_LABEL} (20-100) [95% CI] (n, failures)", f"Δ {JUDGE_LABEL} (p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        ckpt = f"{r['checkpoint_rule']}: {r['checkpoint']}" if r["checkpoint_rule"] else r["checkpoint"] or "n/a"
        cells = [str(r["row"]), Path(r["folder"]).name, r["run"], ckpt, str(r["num_samples"]),
                 _fmt(r["bleu_4"]), _fmt(r["meteor"]),
                 _fmt(r["rouge_l"]), _ci(r, "cider"), _delta(r, "cider"), _ci(r, "meteor"), _delta(r, "meteor")]
        if judged:
            cells += [_judge_text(r), _delta(r, "judge")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    verdicts = _verdict_lines(rows)
    if verdicts:
        lines += ["", f"Significance against the baseline (paired bootstrap resampling panoramas, Holm-corrected "
                  f"across the {len(verdicts)} row(s) compared, α = {SIGNIFICANCE_LEVEL}):"]
        lines += [f"- {v}" for v in verdicts]
    return "\n".join(lines)


_CSV_COLUMNS = (
    "row", "run", "checkpoint_rule", "checkpoint", "num_samples", *LEADERBOARD_METRICS,
    *(f"delta_{k}" for k in LEADERBOARD_METRICS), "cider_ci_low", "cider_ci_high",
    "meteor_ci_low", "meteor_ci_high", "p_cider", "p_meteor", "p_cider_holm", "p_meteor_holm", "cider_significant",
    "meteor_significant", "cider_verdict", "meteor_verdict", *_JUDGE_COLUMNS, "p_judge_holm", "judge_significant",
    "judge_verdict", "paired_samples", "paired_panoramas", "num_panoramas",
    "baseline", "dataset_sha256", "reference_mode", "prediction_choice", "folder", "picked",
)


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(_CSV_COLUMNS)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r[c] for c in _CSV_COLUMNS])
    return buf.getvalue()


def _html(rows: Sequence[Mapping[str, Any]], warnings: Sequence[str], num_resamples: int) -> str:
    esc = __import__("html").escape

    def data(value: Any) -> str:
        return "" if value is None else repr(float(value))

    keys = ["bleu_4", "meteor", "rouge_l", "cider", "delta_cider", "p_cider", "meteor_sample_mean", "delta_meteor",
            "p_meteor"]
    labels = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D [95% CI]", "Δ CIDEr-D", "p", "METEOR mean [95% CI]",
              "Δ METEOR", "p"]
    judged = "judge" in _tested(rows)
    if judged:
        keys += ["judge", "delta_judge", "p_judge"]
        labels += [f"{JUDGE_LABEL} [95% CI]", f"Δ {JUDGE_LABEL}", "p"]

    def ci_html(row: Mapping[str, Any], key: str) -> str:
        if row.get(f"{key}_ci_low") is None:
            return "n/a"
        return (f"{_fmt(row[f'{key}_sample_mean'])}<div class=\"muted\">[{_fmt(row[f'{key}_ci_low'])}, "
                f"{_fmt(row[f'{key}_ci_high'])}]</div>")
    def p_html(row: Mapping[str, Any], key: str) -> str:
        if row["baseline"]:
            return ""
        significant = row.get(f"{key}_significant")
        word = "" if significant is None else ("significant" if significant else "not significant")
        return (f"{esc(_fmt_p(row.get(f'p_{key}')))}<div class=\"muted\">Holm {esc(_fmt_p(row.get(f'p_{key}_holm')))}"
                f"<br>{word}</div>")

    def judge_html(row: Mapping[str, Any]) -> list[str]:
        """The judge's score with its interval, n and failure rate, and who judged; its difference; its p."""
        if row.get("judge_n") is None:
            return ["<span class=\"muted\">not judged</span>", "", ""]
        rate = row["judge_failure_rate"]
        interval = ("" if row["judge_ci_low"] is None else
                    f"[{_fmt(row['judge_ci_low'], _JUDGE_DIGITS)}, {_fmt(row['judge_ci_high'], _JUDGE_DIGITS)}]<br>")
        bad = " bad" if row["judge_num_failed"] else ""
        score = (f"{esc(_fmt(row['judge'], _JUDGE_DIGITS))}<div class=\"muted\">{interval}n {row['judge_n']} of "
                 f"{row['judge_num_samples']}, <span class=\"judge-failed{bad}\">failed {row['judge_num_failed']}"
                 + (f" = {100 * rate:.1f}%" if rate is not None else "")
                 + f"</span><br>judge {esc(str(row['judge_model']))}</div>")
        if row["baseline"]:
            return [score, "baseline", ""]
        if row["judge_comparable"] is False:
            return [score, f"<span class=\"warn\">{esc(_OTHER_JUDGE)}</span>", ""]
        return [score, esc(_fmt(row["delta_judge"], _JUDGE_DIGITS, signed=True)), p_html(row, "judge")]

    head = ("<th class=\"num\" data-key=\"index\">#</th><th data-key=\"run\">run</th><th>checkpoint</th>"
            "<th class=\"num\" data-key=\"num_samples\">n</th>"
            + "".join(f"<th class=\"num\" data-key=\"{k}\">{esc(l)}</th>" for k, l in zip(keys, labels)))
    body_rows = []
    for r in rows:
        attrs = "".join(f" data-{k}=\"{data(r.get(k))}\"" for k in keys)
        cells = [
            esc(_fmt(r["bleu_4"])), esc(_fmt(r["meteor"])), esc(_fmt(r["rouge_l"])), ci_html(r, "cider"),
            "baseline" if r["baseline"] else esc(_fmt(r["delta_cider"], signed=True)),
            p_html(r, "cider"), ci_html(r, "meteor"),
            "baseline" if r["baseline"] else esc(_fmt(r["delta_meteor"], signed=True)),
            p_html(r, "meteor"),
        ]
        if judged:
            cells += judge_html(r)
        body_rows.append(
            f"<tr class=\"row\" data-index=\"{r['row']}\" data-run=\"{esc(r['run'])}\" "
            f"data-num_samples=\"{r['num_samples']}\"{attrs}>"
            f"<td class=\"num\">{r['row']}</td><td title=\"{esc(r['folder'])}\">{esc(r['run'])}"
            f"<div class=\"muted mono\">{esc(Path(r['folder']).name)}</div>"
            + (f"<div class=\"muted\">{esc(r['picked'])}</div>" if r["picked"] != "evaluation folder" else "")
            + f"</td><td>{esc(r['checkpoint_rule'] or '')}"
            f"<div class=\"mono small\">{esc(r['checkpoint'] or 'n/a')}</div></td>"
            f"<td class=\"num\">{r['num_samples']}</td>"
            + "".join(f"<td class=\"num\">{c}</td>" for c in cells) + "</tr>"
        )
    warn = "".join(f"<li class=\"warn\">{esc(w)}</li>" for w in warnings)
    verdicts = "".join(f"<li>{esc(v)}</li>" for v in _verdict_lines(rows))
    body = (
        f"<h1>panollava leaderboard</h1><div class=\"muted\">{len(rows)} evaluations; differences are against "
        "the baseline row</div>"
        + (f"<h2>Warnings</h2><ul id=\"warnings\">{warn}</ul>" if warnings else "")
        + "<div class=\"controls\"><span id=\"count\" class=\"muted\"></span>"
        "<span class=\"muted\">click a header to sort</span></div>"
        f"<table class=\"sortable\" id=\"leaderboard\" data-default-sort=\"index\"><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body_rows)}</tbody></table>"
        + (f"<h2>Significance</h2><ul id=\"verdicts\">{verdicts}</ul>" if verdicts else "")
        + f"<p class=\"muted\">Intervals: 95 % percentile bootstrap ({num_resamples} resamples, seed {_SEED}) of the "
        "mean per-sample score, resampling panoramas (all the queries of a drawn panorama together: they are "
        "correlated); CIDEr-D's document frequencies are those of the full evaluated set (each sample's "
        "CIDEr-D was computed once against it, and the corpus CIDEr-D is their mean). METEOR's corpus value "
        "aggregates alignment statistics over all samples, so its interval is given around the mean of the "
        "per-sample values. p: two-sided paired bootstrap test against the baseline on the samples both rows "
        f"share, resampling panoramas; Holm: adjusted across the rows compared with the baseline, significant "
        f"below {SIGNIFICANCE_LEVEL} (docs/reporting.md).</p>"
        + ("<p class=\"muted\">LLM judge (<code>panollava-cli judge</code>, docs/judge.md): the mean of the "
           "per-sample rubric scores (20-100) of the samples the judge scored, with the same panorama bootstrap; "
           "failed samples are left out of it and counted beside it. Its p compares the samples both rows have a "
           "judge score for. Judge scores are comparable only for the same judge model, rubric and judge "
           "settings: see the warnings.</p>" if judged else "")
    )
    return render_page("panollava leaderboard", body, extra_css=".ckpt{min-width:240px}")


def run_compare(
    paths: list[str],
    output_dir: str | None = None,
    baseline: str | None = None,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    cwd: str | None = None,
) -> dict[str, Any]:
    """Build the leaderboard of several evaluations and write ``leaderboard.csv`` and ``leaderboard.html``.

    Args:
        paths: Evaluation folders or run directories (see :func:`find_evaluation`), one row each, in order.
        output_dir: Folder for leaderboard.csv and leaderboard.html (default: the current directory).
        baseline: The evaluation the others are compared with (default: the first row). If it is not among
            ``paths`` it becomes the first row.
        num_resamples: Bootstrap resamples.
        cwd: Where run directories' evaluations are looked for (default: the current directory).

    Returns:
        ``{"markdown": str, "csv_path": Path, "html_path": Path, "warnings": list[str], "rows": list[dict]}``.

    Raises:
        InvalidInputError: No paths, or the same evaluation twice.
        InputNotFoundError: A path that is not an evaluation (see :func:`find_evaluation`).
    """

    if not paths:
        raise InvalidInputError("compare needs at least one evaluation folder or run directory")
    evals = [load_evaluation(p, cwd) for p in paths]
    seen: dict[Path, str] = {}
    for p, e in zip(paths, evals):
        if e.folder in seen:
            raise InvalidInputError(
                f"'{p}' and '{seen[e.folder]}' are the same evaluation ({e.folder}); list each evaluation once"
            )
        seen[e.folder] = p
    base = evals[0]
    if baseline is not None:
        wanted = load_evaluation(baseline, cwd)
        match = next((e for e in evals if e.folder == wanted.folder), None)
        if match is None:
            evals.insert(0, wanted)
            match = wanted
        base = match
    for i, e in enumerate(evals, start=1):
        e.row["row"] = i
    warnings = _comparability_warnings(evals, base)
    rows = [_build_row(e, base, i, warnings, num_resamples) for i, e in enumerate(evals, start=1)]
    _add_verdicts(rows)
    out = Path(output_dir).expanduser().resolve() if output_dir else Path.cwd()
    csv_path, html_path = out / "leaderboard.csv", out / "leaderboard.html"
    write_text_atomic(csv_path, _csv(rows))
    write_text_atomic(html_path, _html(rows, warnings, num_resamples))
    return {"markdown": _markdown(rows), "csv_path": csv_path, "html_path": html_path, "warnings": warnings,
            "rows": rows}
