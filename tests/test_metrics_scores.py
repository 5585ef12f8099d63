"""``score_captions``: robustness (empty, emoji, newlines, long texts), METEOR timeout, no Java, SPICE,
errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from panollava.errors import InvalidInputError
from panollava.metrics import OFFICIAL_METRICS, CaptionScores, meteor as meteor_module, score_captions
from panollava.metrics.meteor import MeteorProcess, MeteorTimeout
from panollava.metrics.spice import spice_unavailable_reason

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(JAVA is None, reason="pycocoevalcap's METEOR needs Java")

REFS = {
    "a": ["A man rides a red bicycle down the street.", "Someone is cycling on a city road."],
    "b": ["Two dogs play in the snow.", "A pair of dogs running through snow!"],
    "c": ["A kitchen with white cabinets.", "The kitchen has a white counter and a sink."],
    "d": ["People walk across a busy square.", "A crowded plaza with many pedestrians."],
}
# Also scored against pycocoevalcap in tests/test_metrics_parity.py.
PREDS = {
    "a": "A man riding a bicycle on the street.",
    "b": "",  # empty: scored as empty
    "c": "A white kitchen 😀 with a sink 👍🏽.",  # emoji (non-BMP)
    "d": "People\nwalk across a\r\nbusy square.",  # newlines, including \r
}


@pytest.fixture(scope="module")
def scores() -> CaptionScores:
    return score_captions(PREDS, REFS, secondary=True)


def test_robust_inputs_are_scored(scores):
    # Parity of these inputs with pycocoevalcap:
    # tests/test_metrics_parity.py::test_robust_inputs_match_pycocoevalcap
    assert scores.num_samples == 4
    assert scores.per_sample["b"]["bleu_4"] == pytest.approx(0.0, abs=1e-6)
    assert scores.per_sample["b"]["cider"] == 0.0
    if JAVA is not None:
        assert scores.per_sample["b"]["meteor"] == 0.0
        assert scores.corpus["meteor"] is not None


def test_metrics_json_layout(scores):
    data = scores.to_metrics_json()
    json.dumps(data, allow_nan=False)  # plain JSON, no NaN
    for name in OFFICIAL_METRICS:
        assert name in data and (data[name] is None or isinstance(data[name], float))
    assert data["spice"] is None and "CoreNLP" in data["unavailable"]["spice"]
    assert data["num_samples"] == 4 and data["tokenizer"] == "ptb-python"
    assert "pycocoevalcap" in data["implementations"]["cider"] and "tokenizer" in data["implementations"]
    assert set(data["secondary"]) == {"torchmetrics_bleu_4_ptb", "torchmetrics_rouge_l_ptb"}
    assert "per_sample" not in data
    assert all(0.0 <= v <= 1.0 for v in data["secondary"].values())


def test_secondary_bleu_matches_coco_bleu_on_non_empty_predictions():
    # Fed the same PTB tokens, torchmetrics' BLEU-4 is the COCO one (it only counts empty predictions
    # differently).
    non_empty = {k: v for k, v in PREDS.items() if v}
    result = score_captions(non_empty, {k: REFS[k] for k in non_empty}, meteor=False)
    assert result.secondary["torchmetrics_bleu_4_ptb"] == pytest.approx(result.corpus["bleu_4"], abs=1e-6)


def test_per_sample_scores_cover_every_sample(scores):
    assert set(scores.per_sample) == set(PREDS)
    for values in scores.per_sample.values():
        assert set(values) == {"bleu_4", "cider", "rouge_l", "meteor"}


@needs_java
def test_very_long_texts():
    words = ("a man walks his dog along the river bank near the old stone bridge while " * 80).split()
    assert len(words) > 1000
    long_pred = {"x": " ".join(words), "y": "a dog"}
    refs = {"x": ["a man walks a dog by the river."], "y": [" ".join(words[:1200])]}
    result = score_captions(long_pred, refs, secondary=False)
    metrics = ("bleu_4", "meteor", "rouge_l", "cider")
    assert all(result.corpus[m] is not None for m in metrics), result.unavailable
    assert 0.0 <= result.per_sample["x"]["rouge_l"] <= 1.0


def test_meteor_process_timeout_kills_it():
    proc = MeteorProcess([sys.executable, "-c", "import time; time.sleep(120)"])
    import time

    with pytest.raises(MeteorTimeout):
        proc.score({"a": ["x"]}, {"a": ["y"]}, deadline=time.monotonic() + 1.0)
    assert not proc.alive


def test_hanging_meteor_gives_null_with_reason_and_other_metrics(monkeypatch):
    hanging = MeteorProcess([sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(meteor_module, "_SHARED", hanging)
    if JAVA is None:
        pytest.skip("without Java METEOR is never started")
    result = score_captions(PREDS, REFS, meteor_timeout_s=1.5, secondary=False)
    assert result.corpus["meteor"] is None
    assert "did not finish within meteor_timeout_s=1.5 s" in result.failed["meteor"]
    assert "killed" in result.failed["meteor"]
    assert result.corpus["cider"] is not None and result.corpus["bleu_4"] is not None
    assert not hanging.alive


def test_crashing_meteor_is_reported(monkeypatch):
    if JAVA is None:
        pytest.skip("without Java METEOR is never started")
    command = [sys.executable, "-c", "import sys; sys.stderr.write('boom: no heap'); sys.exit(3)"]
    crashing = MeteorProcess(command)
    crashing.proc.wait()
    monkeypatch.setattr(meteor_module, "_SHARED", crashing)
    monkeypatch.setattr(meteor_module, "meteor_command", lambda java: command)
    result = score_captions(PREDS, REFS, secondary=False)
    assert result.corpus["meteor"] is None and "boom: no heap" in result.failed["meteor"]
    assert result.corpus["rouge_l"] is not None


def test_without_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    assert shutil.which("java") is None
    result = score_captions(PREDS, REFS, secondary=False)
    assert result.corpus["meteor"] is None and "java is not on PATH" in result.unavailable["meteor"]
    assert result.tokenizer == "ptb-python"
    assert any("pure-Python PTB tokenizer" in note for note in result.notes)
    assert result.to_metrics_json()["tokenizer"] == "ptb-python"
    assert result.corpus["cider"] is not None
    assert "Java" in spice_unavailable_reason(None) or "CoreNLP" in spice_unavailable_reason(None)
    with pytest.raises(RuntimeError, match="needs Java"):
        score_captions(PREDS, REFS, tokenizer="java", secondary=False)


def test_meteor_can_be_skipped():
    result = score_captions(PREDS, REFS, secondary=False, meteor=False)
    assert result.corpus["meteor"] is None and "meteor=False" in result.unavailable["meteor"]
    assert all(v["meteor"] is None for v in result.per_sample.values())


def test_spice_runs_when_its_jars_exist(monkeypatch, tmp_path):
    """The SPICE plumbing, with a stand-in for the jar (the real one needs CoreNLP models we do not have)."""
    from panollava.metrics import spice

    fake = (
        "import json, sys; data = json.load(open(sys.argv[1])); "
        "json.dump([{'image_id': d['image_id'], 'scores': {'All': {'f': 0.25}}} for d in data], "
        "open(sys.argv[2], 'w'))"
    )
    run = spice.SpiceRun({"a": ["x y"], "b": ["z"]}, {"a": ["x"], "b": ["z"]}, java="java",
                         command=[sys.executable, "-c", fake, "{input}", "{output}"])
    assert run.result(30) == pytest.approx(0.25)
    hang = spice.SpiceRun({"a": ["x"]}, {"a": ["x"]}, java="java",
                          command=[sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(RuntimeError, match="killed"):
        hang.result(0.5)


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ({"a": "x"}, {"b": ["x"]}, "same sample ids"),
        ({"a": None}, {"a": ["x"]}, "predictions must be strings"),
        ({"a": "x"}, {"a": []}, "non-empty list of strings"),
        ({"a": "x"}, {"a": "x"}, "non-empty list of strings"),
        ({}, {}, "nothing to score"),
        ({1: "x", "1": "y"}, {1: ["x"], "1": ["y"]}, "collide"),
    ],
)
def test_invalid_inputs(predictions, references, match):
    with pytest.raises(InvalidInputError, match=match):
        score_captions(predictions, references, secondary=False, meteor=False)


def test_empty_reference_is_refused():
    with pytest.raises(InvalidInputError, match=r"empty reference.*'a'"):
        score_captions({"a": "x"}, {"a": ["a cat", " "]}, secondary=False, meteor=False)


def test_a_metric_that_raises_is_failed_not_unavailable(monkeypatch):
    from pycocoevalcap.cider.cider import Cider

    from panollava.errors import MetricFailedError

    def boom(self, gts, res):
        raise ZeroDivisionError("no document frequencies")

    monkeypatch.setattr(Cider, "compute_score", boom)
    result = score_captions(PREDS, REFS, secondary=False, meteor=False)
    assert result.corpus["cider"] is None and "CIDEr-D raised ZeroDivisionError" in result.failed["cider"]
    assert "cider" not in result.unavailable and result.to_metrics_json()["failed"] == result.failed
    assert result.corpus["bleu_4"] is not None and not math.isnan(result.corpus["bleu_4"])
    with pytest.raises(MetricFailedError, match=r"1 metric\(s\) failed: cider: CIDEr-D raised .*written \(m.json\)"):
        result.raise_for_failures(written=["m.json"])
    assert MetricFailedError.exit_code == 3


def test_unavailable_is_fatal_only_in_strict_mode():
    from panollava.errors import MetricFailedError

    result = score_captions(PREDS, REFS, secondary=False, meteor=False)
    assert not result.failed and "meteor" in result.unavailable
    result.raise_for_failures()  # a warning only
    with pytest.raises(MetricFailedError, match=r"unavailable \(strict mode\): meteor: unavailable: METEOR was not"):
        result.raise_for_failures(strict=True)


def test_import_is_light():
    code = (
        "import sys, panollava.metrics, panollava.commands.score; "
        "names = ('torch', 'lightning', 'transformers', 'torchmetrics', 'numpy'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
