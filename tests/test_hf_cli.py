"""``panollava-cli test --hf_model`` (issue 20): off-the-shelf Hugging Face VLMs through the same engine as our runs.

Three families (Qwen2-VL, LLaVA, InternVL), tiny random-weight folders saved here, on a CSV of 3 real panoramas
with 1-3 queries each: greedy captions equal the model's own ``generate`` called per sample at batch 1 (built
independently in tests/test_hf_family.py's helpers), at batch sizes 1 and 4 and on 2 processes; sampled captions
are identical across those layouts; a peft adapter; the protocol sweep and a leaderboard beside one of our runs;
the refusal of a single-image family asked for several images.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from multi_eval import torchrun
from panollava.cli import main

VIEW = ["--model.model_config.image_size", "56"]  # the rendered views' size (the tests' tiny models see 56 px views)
KINDS = ("qwen2_vl", "llava", "internvl")


def _predictions(out: Path) -> list[str]:
    return [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_panoramas):
    """Tiny model folders, a CSV in the order of test_hf_family.SAMPLES, a peft adapter, and the reference captions
    (per-sample ``generate`` on inputs built without the family)."""
    from peft import LoraConfig, get_peft_model
    from test_hf_family import MAX_NEW, SAMPLES, reference_captions
    from transformers import AutoModelForImageTextToText

    from panollava.data.images import load_panorama
    from panollava.data.views import ViewConfig
    from panollava.offline.tiny_hf import build_tiny_hf_model

    root = tmp_path_factory.mktemp("hf_cli")
    folders = {kind: build_tiny_hf_model(kind, root / kind) for kind in (*KINDS, "blip2")}
    paths = sample_panoramas[:3]
    csv_path = root / "three.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "query", "annotation"])
        for p, query in SAMPLES:
            writer.writerow([str(paths[p]), query, f"a reference about the {query}"])
            writer.writerow([str(paths[p]), query, f"another reference on {query} here"])
    panoramas = [(p.stem, load_panorama(p)) for p in paths]
    views = ViewConfig(crop_strategy="anyres_e2p", image_size=(56, 56))
    order = [f"s{k}" for k in range(len(SAMPLES))]
    expected = {kind: [reference_captions(folders[kind], kind, panoramas, views)[s] for s in order] for kind in KINDS}

    torch.manual_seed(3)
    adapter = root / "llava_adapter"
    peft_model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(folders["llava"]),
        LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(adapter)
    adapted = [reference_captions(folders["llava"], "llava", panoramas, views, adapter=adapter)[s] for s in order]
    return {"root": root, "folders": folders, "csv": csv_path, "expected": expected, "adapter": adapter,
            "adapted": adapted, "max_new": str(MAX_NEW)}


def _args(setup, kind: str, out: Path, *extra: str) -> list[str]:
    return ["test", "--hf_model", str(setup["folders"][kind]), "--csv_input", str(setup["csv"]),
            "--max_new_tokens", setup["max_new"], "--output_dir", str(out), "--progress", "false", *VIEW, *extra]


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_test_hf_model_equals_per_sample_generate(setup, kind, tmp_path):
    for batch_size in ("1", "4"):
        out = tmp_path / f"b{batch_size}"
        assert main(_args(setup, kind, out, "--batch_size", batch_size)) == 0
        assert _predictions(out) == setup["expected"][kind], (kind, batch_size)
    metrics = json.loads((tmp_path / "b4" / "metrics.json").read_text())
    assert metrics["family"] == "hf" and metrics["model"]["model_type"] == kind
    assert metrics["model"]["protocol"]["crop_strategy"] == "anyres_e2p"
    assert metrics["model"]["protocol"]["num_images"] == 9
    assert metrics["decoding"]["do_sample"] is False and metrics["decoding"]["num_beams"] == 1
    assert metrics["model_fingerprint"]
    report = (tmp_path / "b4" / "report.html").read_text()
    assert "anyres_e2p, 56x56 px" in report and "not shown" not in report  # the views this model saw


def test_peft_adapter_through_the_cli(setup, tmp_path):
    out = tmp_path / "adapted"
    assert main(_args(setup, "llava", out, "--hf_adapter", str(setup["adapter"]), "--batch_size", "4")) == 0
    assert _predictions(out) == setup["adapted"] != setup["expected"]["llava"]
    adapter = json.loads((out / "metrics.json").read_text())["model"]["adapter"]
    assert adapter["path"] == str(setup["adapter"].resolve()) and adapter["sha256"]


def test_single_image_family_asked_for_nine_images_is_refused(setup, tmp_path, capsys):
    status = main(_args(setup, "blip2", tmp_path / "blip2"))
    assert status == 2
    assert "takes 1 image per prompt, but crop_strategy 'anyres_e2p' gives 9 images" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_and_sampling_layouts(setup, tmp_path):
    """Sampled captions do not depend on the batch size or the world size; greedy ones on 2 processes equal the
    per-sample references. One torchrun launch runs all the 2-process evaluations."""
    sampled = ("--do_sample", "true", "--seed", "11", "--top_k", "5")
    for name, batch in (("s1", "1"), ("s4", "4")):
        assert main(_args(setup, "qwen2_vl", tmp_path / name, "--batch_size", batch, *sampled)) == 0
    assert _predictions(tmp_path / "s1") == _predictions(tmp_path / "s4")
    assert _predictions(tmp_path / "s1") != setup["expected"]["qwen2_vl"]  # sampling did something
    ddp = ("--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2")
    runs = [_args(setup, kind, tmp_path / f"d_{kind}", "--batch_size", "2", *ddp) for kind in KINDS]
    runs.append(_args(setup, "qwen2_vl", tmp_path / "d_sampled", "--batch_size", "3", *sampled, *ddp))
    proc = torchrun(runs, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    for kind in KINDS:
        assert _predictions(tmp_path / f"d_{kind}") == setup["expected"][kind], kind
        assert json.loads((tmp_path / f"d_{kind}" / "metrics.json").read_text())["evaluation"]["world_size"] == 2
    assert _predictions(tmp_path / "d_sampled") == _predictions(tmp_path / "s1")


@pytest.mark.slow
def test_protocol_sweep_and_a_leaderboard_beside_our_run(setup, tiny_run, tmp_path, capsys, caplog):
    root = tmp_path / "sweep"
    args = _args(setup, "qwen2_vl", root, "--data.crop_strategy", "resize,cubemap,anyres_e2p")
    assert main(args) == 0
    for protocol, images in (("resize", 1), ("cubemap", 4), ("anyres_e2p", 9)):
        metrics = json.loads((root / protocol / "metrics.json").read_text())
        assert metrics["model"]["protocol"]["num_images"] == images, protocol
    assert _predictions(root / "anyres_e2p") == setup["expected"]["qwen2_vl"]
    assert (root / "leaderboard.csv").is_file() and (root / "leaderboard.html").is_file()
    assert "saw the panoramas through another view protocol" in caplog.text
    # one of our own runs on the same CSV, then one leaderboard with the baselines
    ours = tmp_path / "ours"
    assert main(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(setup["csv"]),
                 "--max_new_tokens", setup["max_new"], "--output_dir", str(ours), "--progress", "false"]) == 0
    capsys.readouterr()
    assert main(["compare", str(ours), *(str(root / p) for p in ("resize", "cubemap", "anyres_e2p")),
                 "--output_dir", str(tmp_path / "board")]) == 0
    printed = capsys.readouterr()
    assert printed.out.count("--hf_model") >= 3 or printed.out.count("qwen2_vl") >= 3, printed.out
    warnings = printed.err
    assert "crop_strategy 'resize' vs 'anyres_e2p'" in warnings and "crop_strategy 'cubemap' vs 'anyres_e2p'" in warnings
    # our tiny run's prompt has its own system prompt or template only if configured: the warning names it if so
    rows = list(csv.DictReader((tmp_path / "board" / "leaderboard.csv").open()))
    assert len(rows) == 4
