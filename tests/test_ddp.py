"""Two-process CPU DDP evaluation gives the same predictions and metrics as one process, with no duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from panollava.cli import main


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_cpu_ranks_match_one(tiny_run, shared_data_dir, tmp_path):
    csv = shared_data_dir / "quic360-sample" / "test.csv"
    common = ["--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(csv), "--max_new_tokens", "8",
              "--batch_size", "4"]
    one = tmp_path / "one"
    assert main(["test", *common, "--output_dir", str(one)]) == 0

    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "panollava", "test", *common, "--output_dir", str(two),
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    a, b = _records(one), _records(two)
    # 15 samples on 2 ranks: the sampler pads to 16, the duplicate is dropped.
    assert len(b) == 15 and len({r["sample_id"] for r in b}) == 15
    assert [r["sample_id"] for r in a] == [r["sample_id"] for r in b]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    ma = json.loads((one / "metrics.json").read_text())
    mb = json.loads((two / "metrics.json").read_text())
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "num_samples"):
        assert ma[key] == mb[key], key
    # Only rank 0 printed the banner.
    assert result.stdout.count("Checkpoint directory") == 1
