"""Secondary metrics: torchmetrics' BLEU-4 and ROUGE-L computed on the PTB tokens.

These are *not* the official numbers. They are named ``torchmetrics_*_ptb`` so that nobody mistakes them for
the COCO ones, and exist to cross-check: fed the same PTB tokens, torchmetrics' corpus BLEU-4 agrees with
pycocoevalcap's to ~1e-6 when no prediction is empty (it counts empty predictions differently), while its
ROUGE-L is an F1 (beta = 1, its own normalisation: non-alphanumerics become spaces) averaged over samples,
unlike COCO's beta = 1.2. torch and torchmetrics are imported here, on first use only.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["SECONDARY_METRICS", "secondary_scores"]

SECONDARY_METRICS = ("torchmetrics_bleu_4_ptb", "torchmetrics_rouge_l_ptb")


def secondary_scores(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, Sequence[str]]
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """torchmetrics BLEU-4 and ROUGE-L F1 over PTB-tokenized captions.

    Args:
        references: ``id -> [tokenized reference, ...]``.
        hypotheses: ``id -> [tokenized hypothesis]`` (same ids).

    Returns:
        ``(values, implementations, unavailable)``: numbers by name, implementation by name, and the reason
        for each metric that could not be computed.
    """
    try:
        from torchmetrics.text import BLEUScore, ROUGEScore
    except ImportError as exc:  # pragma: no cover - torchmetrics is a dependency
        reason = f"torchmetrics is not importable: {exc}"
        return {}, {}, {name: reason for name in SECONDARY_METRICS}
    version = importlib.metadata.version("torchmetrics")
    ids = list(references)
    preds = [hypotheses[i][0] for i in ids]
    targets = [list(references[i]) for i in ids]
    values: dict[str, float] = {}
    implementations: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    try:
        values["torchmetrics_bleu_4_ptb"] = float(BLEUScore(n_gram=4)(preds, targets))
        implementations["torchmetrics_bleu_4_ptb"] = (
            f"torchmetrics {version} BLEUScore(n_gram=4) on PTB tokens (secondary, not the COCO BLEU-4)"
        )
    except Exception as exc:  # noqa: BLE001 - a secondary metric must never break scoring
        unavailable["torchmetrics_bleu_4_ptb"] = f"torchmetrics BLEU failed: {type(exc).__name__}: {exc}"
    try:
        rouge = ROUGEScore(rouge_keys=("rougeL",), accumulate="best")(preds, targets)
        values["torchmetrics_rouge_l_ptb"] = float(rouge["rougeL_fmeasure"])
        implementations["torchmetrics_rouge_l_ptb"] = (
            f"torchmetrics {version} ROUGEScore(rouge_keys=('rougeL',), accumulate='best') F1 on PTB tokens "
            "(secondary, not the COCO ROUGE-L)"
        )
    except Exception as exc:  # noqa: BLE001
        unavailable["torchmetrics_rouge_l_ptb"] = f"torchmetrics ROUGE-L failed: {type(exc).__name__}: {exc}"
    return values, implementations, unavailable
