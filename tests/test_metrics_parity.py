"""Parity with pycocoevalcap called directly (≤ 1e-4 on every metric, corpus and per sample).

Workload: the human leave-one-out predictions of ``../shared/data/quic360/test.csv`` (1,119 groups) and a
    perturbed
copy of them (shuffled words, truncations, empty strings, punctuation and case changes, inserted newlines).
The reference scorer runs once per workload (module-scoped fixtures, one METEOR JVM of its own).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from panollava.metrics import OFFICIAL_METRICS, score_captions
from panollava.metrics.human_baseline import human_leave_one_out

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's METEOR and tokenizer need Java"),
]
TOLERANCE = 1e-4
# The robustness inputs of tests/test_metrics_scores.py (kept in sync by hand).
REFS = {
    "a": ["A man rides a red bicycle down the street.", "Someone is cycling on a city road."],
    "b": ["Two dogs play in the snow.", "A pair of dogs running through snow!"],
    "c": ["A kitchen with white cabinets.", "The kitchen has a white counter and a sink."],
    "d": ["People walk across a busy square.", "A crowded plaza with many pedestrians."],
}
PREDS = {
    "a": "A man riding a bicycle on the street.",
    "b": "",
    "c": "A white kitchen 😀 with a sink 👍🏽.",
    "d": "People\nwalk across a\r\nbusy square.",
}
COCO_KEYS = {"bleu_1": "Bleu_1", "bleu_2": "Bleu_2", "bleu_3": "Bleu_3", "bleu_4": "Bleu_4",
             "meteor": "METEOR", "rouge_l": "ROUGE_L", "cider": "CIDEr"}


def _perturb(text: str, kind: int, rng: random.Random) -> str:
    words = text.split()
    if kind == 0:  # shuffled words
        rng.shuffle(words)
        return " ".join(words)
    if kind == 1:  # truncation
        return " ".join(words[: rng.randint(0, len(words))])
    if kind == 2:  # empty prediction
        return ""
    if kind == 3:  # punctuation removed, or added
        if rng.random() < 0.5:
            return re.sub(r"[^\w\s]", "", text)
        return " ".join(w + rng.choice(["", ",", ".", "!", " ...", ";", "'s", " -"]) for w in words)
    if kind == 4:  # case changes
        return rng.choice([str.upper, str.lower, str.title, str.swapcase])(text)
    if kind == 5:  # newlines and double spaces inside the caption
        return "\n".join(words[: len(words) // 2]) + "  " + " ".join(words[len(words) // 2:])
    return text


@pytest.fixture(scope="module")
def reference_meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    yield meteor
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()


def _pycocoevalcap(predictions, references, meteor) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The reference: exactly what COCOEvalCap.evaluate does (without SPICE)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in predictions})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in predictions})
    corpus: dict[str, float] = {}
    per_sample: dict[str, dict[str, float]] = {k: {} for k in predictions}
    bleu, bleus = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"bleu_{n + 1}"] = bleu[n]
    for name, scorer in (("meteor", meteor), ("rouge_l", Rouge()), ("cider", Cider())):
        corpus[name], values = scorer.compute_score(gts, res)
        for k, v in zip(gts, values):
            per_sample[k][name] = float(v)
    for k, v in zip(gts, bleus[3]):
        per_sample[k]["bleu_4"] = v
    return corpus, per_sample


@pytest.fixture(scope="module")
def loo(shared_data_dir: Path):
    return human_leave_one_out(shared_data_dir / "quic360" / "test.csv")


@pytest.fixture(scope="module")
def perturbed(loo):
    predictions, references = loo
    rng = random.Random(0)
    return {k: _perturb(p, i % 7, rng) for i, (k, p) in enumerate(predictions.items())}, references


def _assert_parity(ours, expected_corpus, expected_per_sample):
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"):
        assert ours.corpus[name] is not None, ours.unavailable
        difference = abs(ours.corpus[name] - expected_corpus[name])
        assert difference <= TOLERANCE, (name, ours.corpus[name], expected_corpus[name])
    worst = max(
        abs(ours.per_sample[k][m] - expected[m])
        for k, expected in expected_per_sample.items()
        for m in expected
    )
    assert worst <= TOLERANCE
    assert ours.corpus["spice"] is None and "spice" in ours.unavailable


@pytest.mark.parametrize("workload", ["loo", "perturbed"])
def test_parity_with_pycocoevalcap(workload, request, reference_meteor):
    predictions, references = request.getfixturevalue(workload)
    assert len(predictions) == 1119
    expected_corpus, expected_per_sample = _pycocoevalcap(predictions, references, reference_meteor)
    ours = score_captions(predictions, references, secondary=False)
    _assert_parity(ours, expected_corpus, expected_per_sample)
    if workload == "loo":  # the numbers quoted in docs/metrics.md
        assert ours.corpus["bleu_4"] == pytest.approx(0.0681, abs=1e-4)
        assert ours.corpus["meteor"] == pytest.approx(0.1445, abs=1e-4)
        assert ours.corpus["rouge_l"] == pytest.approx(0.2802, abs=1e-4)  # 3 empty annotations skipped
        assert ours.corpus["cider"] == pytest.approx(0.1602, abs=1e-4)
    else:
        assert sum(p == "" for p in predictions.values()) >= 150  # empty predictions were scored, not dropped
        assert ours.num_samples == 1119


def test_robust_inputs_match_pycocoevalcap(reference_meteor):
    """Empty prediction, emoji, newlines: the same numbers as pycocoevalcap (given '\r' as a space, see
    below)."""
    # pycocoevalcap itself shifts lines on '\r' (its Java tokenizer breaks lines there): compare with '\r' as
    # a space, which is what we feed the tokenizer.
    expected_corpus, expected_per_sample = _pycocoevalcap(
        {k: v.replace("\r", " ") for k, v in PREDS.items()}, REFS, reference_meteor
    )
    ours = score_captions(PREDS, REFS, secondary=False)
    _assert_parity(ours, expected_corpus, expected_per_sample)


def test_java_tokenizer_gives_the_same_scores(loo):
    predictions, references = loo
    subset = list(predictions)[:200]
    python = score_captions({k: predictions[k] for k in subset}, {k: references[k] for k in subset},
                            tokenizer="python", secondary=False, meteor=False)
    java = score_captions({k: predictions[k] for k in subset}, {k: references[k] for k in subset},
                          tokenizer="java", secondary=False, meteor=False)
    assert python.tokenizer == "ptb-python" and java.tokenizer == "ptb-java"
    assert python.corpus == java.corpus and python.per_sample == java.per_sample


def test_coco_eval_names_cover_official_metrics():
    assert set(COCO_KEYS) | {"spice"} == set(OFFICIAL_METRICS)
