"""Real-size check (issue 11 (c)): the real architectures build, train one step, save, load strictly and evaluate.

For each SigLIP class — the fixed-resolution ``SiglipVisionModel`` (the so400m-patch16-256 preset) and the NaFlex
``Siglip2VisionModel`` (so400m numbers, 16-px patches, 256 patches) — with Qwen3-0.6B (its preset), all with
random weights built from the bundled configs and saved as local model folders (the tiny tokenizer stands in for
Qwen's; nothing is downloaded), this runs, each as its own ``python -m panollava`` process:

1. ``fit`` for one optimisation step (finetune stage, LoRA r 32) on 1 real panorama × 2 queries, into a run
   directory;
2. ``test --ckpt_dir RUN_DIR`` on the same panorama × 2 queries with 4 new tokens.

It prints the wall time and peak resident memory of every process, and one JSON line at the end. It takes
minutes and ~10 GB of RAM on CPU: a documented benchmark, not part of CI. Run it alone:

    .venv/bin/python benchmarks/real_size_check.py [--workdir /tmp/real_size] [--kinds siglip siglip2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_CSV = ROOT.parent / "shared" / "data" / "quic360-sample" / "test.csv"


def build_folders(workdir: Path, kinds: list[str]) -> dict[str, Path]:
    """Random-weight model folders: ``qwen3`` (+ tiny tokenizer) and one vision folder per SigLIP class."""
    import torch
    from transformers import AutoModelForCausalLM, Siglip2VisionConfig, Siglip2VisionModel, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    from panollava.models.presets import load_preset_config
    from panollava.offline.tiny_models import build_tiny_models

    torch.manual_seed(0)
    folders: dict[str, Path] = {}
    lm_dir = workdir / "models" / "qwen3-0.6b-random"
    if not (lm_dir / "config.json").is_file():
        lm = AutoModelForCausalLM.from_config(load_preset_config("qwen3-0.6b"))
        lm.save_pretrained(lm_dir)
        del lm
        tiny_lm = build_tiny_models()["tiny-qwen3"]
        for name in os.listdir(tiny_lm):
            if name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(tiny_lm / name, lm_dir / name)
    folders["lm"] = lm_dir
    for kind in kinds:
        vdir = workdir / "models" / f"{kind}-so400m-random"
        if not (vdir / "config.json").is_file():
            if kind == "siglip":
                config = load_preset_config("siglip2-so400m-patch16-256")
                config.vision_use_head = False
                SiglipVisionModel(config).save_pretrained(vdir)
                SiglipImageProcessorPil(size={"height": 256, "width": 256}, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3).save_pretrained(vdir)
            else:
                fixed = load_preset_config("siglip2-so400m-patch16-256")
                config = Siglip2VisionConfig(
                    hidden_size=fixed.hidden_size, intermediate_size=fixed.intermediate_size,
                    num_hidden_layers=fixed.num_hidden_layers, num_attention_heads=fixed.num_attention_heads,
                    patch_size=16, num_patches=256, vision_use_head=False,
                )
                Siglip2VisionModel(config).save_pretrained(vdir)
                Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3).save_pretrained(vdir)
        folders[kind] = vdir
    return folders


def write_csv(workdir: Path) -> Path:
    """1 real panorama × 2 queries (all their reference rows)."""
    with SAMPLE_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    url = rows[0]["url"]
    queries: list[str] = []
    for r in rows:
        if r["url"] == url and r["query"] not in queries:
            queries.append(r["query"])
    keep = [r for r in rows if r["url"] == url and r["query"] in queries[:2]]
    out = workdir / "one_panorama.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["url", "query", "annotation"])
        writer.writeheader()
        for r in keep:
            writer.writerow({"url": str(SAMPLE_CSV.parent / r["url"]), "query": r["query"], "annotation": r["annotation"]})
    return out


def run(cmd: list[str], cwd: Path) -> dict:
    """Run one panollava process; its wall time and peak RSS (this is the only child running)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "panollava", *cmd], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:1])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(max(peak, before) / 2**20, 2), "stdout": result.stdout}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/panollava_real_size")
    parser.add_argument("--kinds", nargs="+", default=["siglip", "siglip2"], choices=["siglip", "siglip2"])
    parser.add_argument("--max_new_tokens", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=1, help="training batch size")
    parser.add_argument("--resampler", default="avgpool", choices=["avgpool", "mlp", "identity"],
                        help="avgpool (default): 576 image tokens per panorama; mlp keeps all 2,304, and on CPU the "
                        "one training step then needs more than the 24 GiB of this VM (killed for memory, batch 1 "
                        "and 2: the CPU attention backward materialises the attention matrices)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folders = build_folders(workdir, args.kinds)
    figures: dict = {"benchmark": "real_size_check", "build_models_s": round(time.perf_counter() - start, 1)}
    data = write_csv(workdir)
    for kind in args.kinds:
        name = f"real-{kind}"
        fit = [
            "fit", "--experiment_name", name, "--dataset_name", "one",
            "--model.model_config.vision_name", str(folders[kind]),
            "--model.model_config.language_model_name", str(folders["lm"]),
            "--model.model_config.resampler_type", args.resampler, "--model.model_config.latent_dimension", "768",
            "--model.stage", "finetune",
            "--data.train_csv", str(data), "--data.val_csv", str(data), "--data.test_csv", str(data),
            "--data.batch_size", str(args.batch_size), "--trainer.limit_train_batches", "1", "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false",
        ]
        figures[f"{kind}_fit"] = run(fit, workdir)
        run_dir = workdir / "runs" / name / "finetune" / f"anyres-e2p_{args.resampler}"
        test = ["test", "--ckpt_dir", str(run_dir), "--csv_input", str(data),
                "--max_new_tokens", str(args.max_new_tokens), "--output_dir", str(workdir / f"eval-{kind}")]
        figures[f"{kind}_test"] = run(test, workdir)
        figures[f"{kind}_test"]["metrics_json"] = (workdir / f"eval-{kind}" / "metrics.json").is_file()
        for stage in ("fit", "test"):
            out = figures[f"{kind}_{stage}"]
            print(f"{kind} {stage}: {out['wall_s']} s, peak RSS {out['peak_rss_gib']} GiB")
            del out["stdout"]
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
