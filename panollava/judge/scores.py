"""Read an evaluation's judge scores back: the pure functions ``compare`` (and anyone else) uses.

:func:`judge_scores_from_metrics` (pure, on metrics.json's content) and :func:`judge_sample_scores` (on a folder)
read the ``judge`` block that ``panollava-cli judge`` wrote into an evaluation's ``metrics.json`` and return the
per-sample weighted scores (20-100), the failures, the corpus score with its interval, and the judge's identity.
:func:`judge_identity_key` is what must be equal for two evaluations' judge scores to be comparable (judge model,
rubric, images, decoding of the judge); ``compare`` should warn when it differs.

Light module: reads JSON only (no panollava module but errors and report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.outputs.files import read_json_object

__all__ = ["JudgeScores", "judge_identity_key", "judge_sample_scores", "judge_scores_from_metrics"]


@dataclass(frozen=True)
class JudgeScores:
    """The judge's scores of one evaluation.

    Attributes:
        folder: The evaluation folder.
        per_sample: ``sample_id`` → weighted score on the 20-100 scale (scored samples only).
        failed: ``sample_id`` → why the sample has no score.
        score: The mean over scored samples (None when none was scored).
        ci95: ``(low, high)`` of the panorama-cluster bootstrap, or None.
        identity: :func:`judge_identity_key` of the block.
        block: The whole ``judge`` block.
    """

    folder: Path
    per_sample: dict[str, float]
    failed: dict[str, str]
    score: float | None
    ci95: tuple[float, float] | None
    identity: dict[str, Any]
    block: dict[str, Any]


def judge_identity_key(block: dict[str, Any]) -> dict[str, Any]:
    """What must match for two judge blocks to be comparable: backend, model, rubric sha256, images, settings."""
    identity = block.get("identity") or {}
    settings = block.get("settings") or {}
    return {
        "backend": identity.get("backend"),
        "model": identity.get("model"),
        "fingerprint": identity.get("fingerprint"),
        "rubric_sha256": (block.get("rubric") or {}).get("sha256"),
        **{k: settings.get(k) for k in ("images", "image_width", "temperature", "seed", "max_tokens",
                                         "response_format")},
    }


def judge_scores_from_metrics(metrics: Mapping[str, Any], folder: str | Path = "") -> JudgeScores | None:
    """The judge scores held in an evaluation's metrics.json content (pure: no file is read).

    Args:
        metrics: The metrics.json content (e.g. ``compare``'s ``Evaluation.metrics``).
        folder: The evaluation folder (recorded in the result and named in errors).

    Returns:
        The scores, or None when the evaluation was not judged (no ``judge`` block).

    Raises:
        InvalidInputError: The block is malformed.
    """
    block = metrics.get("judge")
    if block is None:
        return None
    where = f"'{Path(folder) / 'metrics.json'}'"
    fix = "run 'panollava-cli judge' on the folder again (unchanged answers come from its cache)"
    if not isinstance(block, dict) or not isinstance(block.get("per_sample"), dict):
        raise InvalidInputError(f"{where}: the judge block is malformed (no per_sample mapping); {fix}")
    bad = next((k for k, v in block["per_sample"].items()
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)), None)
    if bad is not None:
        raise InvalidInputError(
            f"{where}: judge per_sample[{bad!r}] is {block['per_sample'][bad]!r}, not a finite number; {fix}"
        )
    ci = block.get("ci95")
    return JudgeScores(
        folder=Path(folder),
        per_sample={str(k): float(v) for k, v in block["per_sample"].items()},
        failed={str(k): str(v) for k, v in (block.get("failed") or {}).items()},
        score=block.get("score"),
        ci95=(float(ci["low"]), float(ci["high"])) if isinstance(ci, dict) else None,
        identity=judge_identity_key(block),
        block=block,
    )


def judge_sample_scores(folder: str | Path) -> JudgeScores:
    """The judge scores of an evaluation folder (its metrics.json's ``judge`` block).

    Args:
        folder: The evaluation folder (holding metrics.json).

    Returns:
        Its judge scores.

    Raises:
        InputNotFoundError: No metrics.json there, or it was not judged.
        InvalidInputError: The block is malformed.
    """
    folder = Path(folder).expanduser().resolve()
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise InputNotFoundError(f"no metrics.json in '{folder}': pass an evaluation folder")
    scores = judge_scores_from_metrics(read_json_object(metrics_path), folder)
    if scores is None:
        raise InputNotFoundError(
            f"'{metrics_path}' has no judge block: run 'panollava-cli judge --eval_dir {folder}' first"
        )
    return scores
