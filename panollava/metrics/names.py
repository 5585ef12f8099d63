"""The names of the caption metrics: the one list every writer, reader and page uses.

Light module: imports nothing.
"""

from __future__ import annotations

__all__ = ["METRIC_LABELS", "OFFICIAL_METRICS", "PER_SAMPLE_METRICS", "PER_SAMPLE_METRICS_SHOWN"]

OFFICIAL_METRICS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice")
"""The corpus metrics of the COCO caption scorer, as keys of ``metrics.json``, in table order."""

PER_SAMPLE_METRICS: tuple[str, ...] = ("bleu_4", "cider", "rouge_l", "meteor")
"""The metrics scored per sample (``scores`` of ``predictions.jsonl``), in the column order of ``predictions.csv``."""

PER_SAMPLE_METRICS_SHOWN: tuple[str, ...] = tuple(m for m in OFFICIAL_METRICS if m in PER_SAMPLE_METRICS)
"""The per-sample metrics in table order (``bleu_4``, ``meteor``, ``rouge_l``, ``cider``): report.html's columns,
the leaderboard's."""

METRIC_LABELS: dict[str, str] = {
    "bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4", "meteor": "METEOR",
    "rouge_l": "ROUGE-L", "cider": "CIDEr-D", "spice": "SPICE",
}
"""How a page names each metric of :data:`OFFICIAL_METRICS`."""
