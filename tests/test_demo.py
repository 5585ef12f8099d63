"""The demo: a tiny model trained by the project must measurably use the image (learnability check)."""

from __future__ import annotations

import json

import pytest

from panollava.cli import main


@pytest.mark.slow
def test_demo_trained_model_uses_the_image(tmp_path):
    assert main(["demo", "--output_dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    trained, blind = summary["trained"], summary["image_blind"]
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider"):
        assert isinstance(trained[key], float) and isinstance(blind[key], float), key
    assert trained["num_samples"] == blind["num_samples"] == 80  # 40 held-out panoramas × 2 queries
    # Held-out split: the trained model must beat the image-blind baseline by a wide margin.
    assert trained["cider"] > 0.5
    assert trained["cider"] >= 3 * blind["cider"], (trained["cider"], blind["cider"])
    assert (tmp_path / "eval" / "trained" / "predictions.jsonl").is_file()
    assert summary["run_dir"].endswith("runs/demo/finetune/anyres-e2p_mlp")
