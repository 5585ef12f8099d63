"""The demo: a tiny model trained by the project must measurably use the image (learnability check), and the demo
leaves what a newcomer looks at: the report, the leaderboard and the TensorBoard curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panollava.cli import main


@pytest.mark.slow
def test_demo_trained_model_uses_the_image(tmp_path, capsys):
    assert main(["demo", "--output_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    trained, blind = summary["trained"], summary["image_blind"]
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider"):
        assert isinstance(trained[key], float) and isinstance(blind[key], float), key
    assert trained["num_samples"] == blind["num_samples"] == 80  # 40 held-out panoramas × 2 queries
    # Held-out split: the trained model must beat the image-blind baseline by a wide margin.
    assert trained["cider"] > 0.5
    assert trained["cider"] >= 3 * blind["cider"], (trained["cider"], blind["cider"])
    assert (tmp_path / "eval" / "trained" / "predictions.jsonl").is_file()
    assert Path(summary["run_dir"]).parent.parent == tmp_path / "runs" / "demo"
    # Both fits ran (one of them in a child process) and wrote complete run directories with TensorBoard logs.
    for run_dir in summary["run_dirs"].values():
        assert (Path(run_dir) / "best.ckpt").is_file() and (Path(run_dir) / "checkpoint_metadata.json").is_file()
        assert list((Path(run_dir) / "tensorboard").rglob("events.out.tfevents.*")), run_dir
    # What the demo prints a newcomer to open: the report, the leaderboard (trained vs image-blind) and TensorBoard.
    report = Path(summary["report"])
    leaderboard = Path(summary["leaderboard"]["html"])
    assert report.is_file() and leaderboard.is_file() and Path(summary["leaderboard"]["csv"]).is_file()
    assert str(report) in printed and str(leaderboard) in printed and summary["tensorboard"] in printed
    assert "image_blind" in leaderboard.read_text(encoding="utf-8")


def test_demo_dataset_is_reused_when_the_demo_runs_again(tmp_path):
    """`make demo` twice into the same folder: the query subset is recorded as written, so the data is reused."""
    from panollava.commands.demo import DEMO_QUERIES
    from panollava.offline.synthetic import generate_synthetic_dataset

    args = {"num_train": 2, "num_val": 1, "num_test": 1, "size_hw": (32, 64), "seed": 0, "queries": DEMO_QUERIES}
    first = generate_synthetic_dataset(tmp_path, **args)
    marker = json.loads((tmp_path / "synthetic.json").read_text())
    assert marker["queries"] == list(DEMO_QUERIES)
    stamp = first["train"].stat().st_mtime_ns
    assert generate_synthetic_dataset(tmp_path, **args) == first
    assert first["train"].stat().st_mtime_ns == stamp


def test_demo_rerun_starts_from_clean_run_and_evaluation_folders(tmp_path):
    """A rerun trains anew, so the previous run and evaluation (which resume would refuse) are replaced."""
    from panollava.commands.demo import BLIND_EXPERIMENT, _Step

    old_eval = tmp_path / "eval" / "image_blind" / "predictions.jsonl"
    old_ckpt = tmp_path / "runs" / BLIND_EXPERIMENT / "finetune" / "anyres-e2p_avgpool" / "x.ckpt"
    for path in (old_eval, old_ckpt):
        path.parent.mkdir(parents=True)
        path.write_text("from the previous run")
    data = {split: tmp_path / "data" / f"{split}.csv" for split in ("train", "val", "test")}
    step = _Step(tmp_path, data, BLIND_EXPERIMENT, True, None)
    assert not old_eval.exists() and not old_ckpt.exists()
    assert step.run_dir == old_ckpt.parent and "--data.image_blind" in step.fit
