"""Caption metrics that equal the COCO caption scorer (pycocoevalcap 1.2).

Functional API (light: importing it loads neither numpy, torch, lightning nor transformers):

- :func:`score_captions` — BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (SPICE when its models are present), corpus and
  per-sample, against all references of each sample; returns :class:`CaptionScores`;
- :func:`tokenize_caption_files` — pycocoevalcap's PTB tokenisation (pure Python or Java).

The torchmetrics ``Metric`` for Lightning (state gathered across ranks, de-duplicated by sample id) lives in
:mod:`panollava.metrics.metric`, which imports torch and is therefore not imported here. See
``docs/metrics.md``.
"""

from panollava.metrics.caption_scores import (
    OFFICIAL_METRICS,
    PER_SAMPLE_METRICS,
    CaptionScores,
    score_captions,
)
from panollava.metrics.human_baseline import human_leave_one_out
from panollava.metrics.meteor import close_meteor, prestart_meteor
from panollava.metrics.ptb_tokenizer import PUNCTUATIONS, TokenizedCaptions, tokenize_caption_files

__all__ = [
    "OFFICIAL_METRICS",
    "PER_SAMPLE_METRICS",
    "PUNCTUATIONS",
    "CaptionScores",
    "TokenizedCaptions",
    "close_meteor",
    "human_leave_one_out",
    "prestart_meteor",
    "score_captions",
    "tokenize_caption_files",
]
