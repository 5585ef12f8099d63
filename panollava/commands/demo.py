"""``panollava-cli demo``: the whole loop on an embedded default, offline, on a CPU.

1. writes the tiny models (cached) and a generated panorama-captioning dataset (``panollava.data.synthetic``:
   one coloured shape per panorama, at a known direction, captions that depend on it);
2. trains a tiny VLM (every part trainable, ``panollava/configs/demo.yaml``) with ``panollava-cli fit``, which
   writes a real run directory;
3. evaluates that run directory with ``panollava-cli test --ckpt_dir`` on the held-out test split;
4. trains and evaluates the same model with every view replaced by zeros (the image-blind baseline);
5. writes ``summary.json`` and prints both metric tables.

A model that uses the image should beat the image-blind baseline by a wide margin (CIDEr); the two numbers side by
side are the demo's point.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from panollava.errors import PanoLLaVAError

DEMO_EXPERIMENT = "demo"
BLIND_EXPERIMENT = "demo-image-blind"
# Colour and direction are learned within the CPU budget; shape (asked about only inside "the object") is
# learned partly. Single-attribute queries with few classes would let a blind model guess right often.
DEMO_QUERIES = ("color", "the object")
DEMO_DATA = {"num_train": 160, "num_val": 20, "num_test": 40, "size_hw": (128, 256), "seed": 0,
             "queries": DEMO_QUERIES}
TABLE_KEYS = ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider")


def demo_config() -> Path:
    """The packaged training config of the demo."""
    return Path(str(resources.files("panollava") / "configs" / "demo.yaml"))


def _run(args: list[str]) -> None:
    from panollava.cli import echo, main

    echo(f"\n$ panollava-cli {' '.join(args)}")
    status = main(args)
    if status != 0:
        raise PanoLLaVAError(f"demo step failed with exit status {status}: panollava-cli {' '.join(args)}")


def _train_and_test(out: Path, data: dict[str, Path], experiment: str, image_blind: bool, max_epochs: int | None) -> dict[str, Any]:
    from panollava.rundir import run_dir_path

    runs = out / "runs"
    shutil.rmtree(runs / experiment, ignore_errors=True)  # the demo owns this folder; reruns start clean
    fit = [
        "fit", "--config", str(demo_config()),
        "--data.train_csv", str(data["train"]), "--data.val_csv", str(data["val"]), "--data.test_csv", str(data["test"]),
        "--experiment_name", experiment, "--runs_root", str(runs), "--dataset_name", "synthetic",
    ]
    if image_blind:
        fit += ["--data.image_blind", "true"]
    if max_epochs is not None:
        fit += ["--trainer.max_epochs", str(max_epochs)]
    started = time.perf_counter()
    _run(fit)
    train_s = time.perf_counter() - started
    run_dir = run_dir_path(runs, experiment, "finetune", "anyres_e2p", "mlp").resolve()
    eval_dir = out / "eval" / ("image_blind" if image_blind else "trained")
    test = ["test", "--ckpt_dir", str(run_dir), "--output_dir", str(eval_dir)]
    if image_blind:
        test += ["--data.image_blind", "true"]
    started = time.perf_counter()
    _run(test)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    return {
        "metrics": {k: metrics.get(k) for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice")}
        | {"num_samples": metrics.get("num_samples")},
        "run_dir": str(run_dir),
        "output_dir": str(eval_dir),
        "seconds": {"fit": round(train_s, 1), "test": round(time.perf_counter() - started, 1)},
    }


def run_demo(output_dir: str | Path, max_epochs: int | None = None, skip_baseline: bool = False) -> dict[str, Any]:
    """Run the demo; returns the summary written to ``output_dir/summary.json``.

    Args:
        output_dir: Folder for the dataset, runs, evaluation results and summary.
        max_epochs: Override the demo config's epochs.
        skip_baseline: Skip the image-blind baseline.
    """
    from panollava.cli import echo
    from panollava.data.synthetic import generate_synthetic_dataset
    from panollava.models.tiny import build_tiny_models
    from panollava.report import write_json_atomic

    import torch

    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The tiny model is overhead-bound: one thread is faster than two (and far faster on a busy machine).
    torch.set_num_threads(1)
    echo(f"🧪 panollava demo → {out}")
    from panollava.lightning_cli import _quiet_third_party

    _quiet_third_party()
    models = build_tiny_models()
    echo(f"✅ tiny models: {models['tiny-siglip'].parent}")
    data = generate_synthetic_dataset(out / "data", **DEMO_DATA)
    echo(f"✅ dataset: {out / 'data'} (train/val/test: {DEMO_DATA['num_train']}/{DEMO_DATA['num_val']}/"
         f"{DEMO_DATA['num_test']} panoramas)")
    trained = _train_and_test(out, data, DEMO_EXPERIMENT, False, max_epochs)
    blind = None if skip_baseline else _train_and_test(out, data, BLIND_EXPERIMENT, True, max_epochs)
    summary: dict[str, Any] = {
        "trained": trained["metrics"],
        "image_blind": blind["metrics"] if blind else None,
        "run_dir": trained["run_dir"],
        "run_dirs": {"trained": trained["run_dir"], "image_blind": blind["run_dir"] if blind else None},
        "output_dirs": {"trained": trained["output_dir"], "image_blind": blind["output_dir"] if blind else None},
        "seconds": {"trained": trained["seconds"], "image_blind": blind["seconds"] if blind else None,
                    "total": round(time.perf_counter() - started, 1)},
        "dataset": {"dir": str(out / "data"), **{k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_DATA.items()}},
    }
    if blind and blind["metrics"].get("cider"):
        summary["cider_ratio"] = trained["metrics"]["cider"] / blind["metrics"]["cider"]
    write_json_atomic(out / "summary.json", summary)

    echo("\n" + "=" * 60)
    echo(f"{'metric':<10}{'trained':>12}{'image-blind':>14}")
    for key in TABLE_KEYS:
        t = trained["metrics"].get(key)
        b = blind["metrics"].get(key) if blind else None
        echo(f"{key:<10}{_fmt(t):>12}{_fmt(b):>14}")
    echo("=" * 60)
    echo(f"📁 predictions: {trained['output_dir']}/predictions.jsonl")
    echo(f"📁 run directory: {trained['run_dir']}")
    echo(f"📄 summary: {out / 'summary.json'}  ({summary['seconds']['total']:.0f} s)")
    return summary


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
