"""End to end: tiny ``fit`` → run directory → ``test --ckpt_dir`` (and its troubleshooting cases).

One tiny training run (``tiny_run`` in conftest.py) is shared by every test here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from panollava.cli import main
from panollava.metadata import read_metadata
from panollava.rundir import parse_checkpoint_filename

SPEC_EXAMPLE_KEYS = {
    "experiment_name": None,
    "stage": None,
    "model_config": ["vision_name", "language_model_name", "resampler_type", "latent_dimension", "image_size"],
    "training_config": ["crop_strategy", "learning_rate", "batch_size", "fov_deg", "use_vision_processor"],
    "dataset": ["train_csv", "val_csv", "dataset_name"],
}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _evaluate(run_dir: Path, out: Path, *extra: str) -> dict:
    status = main(["test", "--ckpt_dir", str(run_dir), "--output_dir", str(out), *extra])
    assert status == 0
    return json.loads((out / "metrics.json").read_text())


def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


# -- the run directory training writes ---------------------------------------------------------------------------
def test_fit_writes_the_run_directory(tiny_run):
    run_dir: Path = tiny_run["run_dir"]
    meta = json.loads((run_dir / "checkpoint_metadata.json").read_text())
    for section, keys in SPEC_EXAMPLE_KEYS.items():
        assert section in meta
        for key in keys or []:
            assert meta[section][key] is not None, f"{section}.{key} is empty"
    assert meta["experiment_name"] == "tiny" and meta["stage"] == "finetune"
    assert meta["model_config"]["vision_name"] == "tiny:siglip"
    assert meta["model_config"]["image_size"] == [32, 32]
    assert meta["training_config"]["crop_strategy"] == "anyres_e2p"
    assert meta["dataset"]["dataset_name"] == "quic360-mini"
    assert Path(meta["dataset"]["test_csv"]).is_file()
    assert meta["model_config"]["lora"]["r"] == 8

    entries = meta["checkpoints"]["all"]
    assert len(entries) == 2  # two validation epochs
    for entry in entries:
        parsed = parse_checkpoint_filename(entry["file"])
        assert parsed is not None and parsed["dataset_name"] == "quic360-mini"
        assert parsed["vision_short"] == "tiny-siglip" and parsed["crop_short"] == "anyres-e2p"
        assert parsed["val_loss"] == pytest.approx(entry["val_loss"], abs=5e-5)
        assert (run_dir / entry["file"]).is_file()
    best = min(entries, key=lambda e: e["val_loss"])
    newest = max(entries, key=lambda e: e["epoch"])
    for link, target in (("best.ckpt", best["file"]), ("last.ckpt", newest["file"])):
        path = run_dir / link
        assert path.is_symlink() and not os.path.isabs(os.readlink(path))
        assert os.readlink(path) == target
    assert meta["checkpoints"]["best"]["file"] == best["file"]
    assert (run_dir / "lora_weights" / "adapter_config.json").is_file()
    assert (run_dir / "lora_weights" / "adapter_model.safetensors").is_file()
    # The SPEC §1 example's reader accepts what training wrote.
    assert read_metadata(run_dir / "checkpoint_metadata.json").defaults_used == []


def test_lora_trains_and_vision_tower_stays(tiny_run):
    from transformers import SiglipVisionModel

    from panollava.offline.tiny_models import build_tiny_models

    trained = tiny_run["cli"].model
    lora_b = [p for n, p in trained.vlm.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().max()) > 0 for p in lora_b)
    base = SiglipVisionModel.from_pretrained(build_tiny_models()["tiny-siglip"])
    trained_vision = trained.vlm.vision_tower.state_dict()
    for name, tensor in base.state_dict().items():
        if name in trained_vision:
            assert torch.equal(trained_vision[name], tensor), name


def test_round_trip_from_run_directory_gives_identical_logits(tiny_run):
    from panollava.module import PanoLLaVAModule
    from panollava.rundir import resolve_run_dir

    trained = tiny_run["cli"].model.eval()
    resolved = resolve_run_dir(tiny_run["run_dir"], "last")
    meta = resolved.metadata
    loaded = PanoLLaVAModule.load_from_checkpoint(
        resolved.checkpoint_path, weights_only=True, lora_dir=str(resolved.lora_dir),
        model_config={k: meta.model_config[k] for k in ("vision_name", "language_model_name", "resampler_type",
                                                         "latent_dimension", "image_size", "image_token")},
    ).eval()
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 9, 3, 32, 32)
    enc = trained.prompts.encode(["furniture", "what they are doing"], trained.vlm.num_image_tokens(9, (32, 32)),
                                 ["a chair", "people are sitting"])
    with torch.no_grad():
        a = trained.vlm(pixel_values=pixel_values, **enc).logits
        b = loaded.vlm(pixel_values=pixel_values, **enc).logits
    assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())


# -- test --ckpt_dir -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_eval(tiny_run, shared_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "first"
    csv = shared_data_dir / "quic360-sample" / "test.csv"
    metrics = _evaluate(tiny_run["run_dir"], out, "--csv_input", str(csv), "--max_new_tokens", "12")
    return {"out": out, "metrics": metrics, "csv": csv}


def test_test_ckpt_dir_on_real_panoramas(real_eval):
    metrics, out = real_eval["metrics"], real_eval["out"]
    records = _predictions(out)
    assert len(records) == 15 and metrics["num_samples"] == 15
    assert len({r["sample_id"] for r in records}) == 15
    assert all(4 <= len(r["references"]) <= 6 for r in records)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"):
        assert isinstance(metrics[key], float), key
    assert metrics["spice"] is None and "spice" in metrics["unavailable"]
    assert metrics["checkpoint"]["rule"] == "best.ckpt link" and len(metrics["checkpoint"]["sha256"]) == 64
    assert metrics["dataset"]["path"] == str(real_eval["csv"])
    assert metrics["settings"]["crop_strategy"]["source"] == "metadata"
    assert metrics["settings"]["max_new_tokens"] == {"value": 12, "source": "cli"}
    assert metrics["settings"]["batch_size"]["source"] == "default"
    assert metrics["decoding"]["max_new_tokens"] == 12 and metrics["decoding"]["do_sample"] is False
    assert metrics["metadata"]["library_versions"]["torch"]  # what training ran with
    assert metrics["library_versions"]["torch"] and metrics["library_versions"]["pycocoevalcap"]  # evaluation
    assert (out / "predictions.csv").read_text().startswith("sample_id,image,query,prediction,references")


def test_second_run_gives_identical_predictions(tiny_run, real_eval, tmp_path):
    _evaluate(tiny_run["run_dir"], tmp_path, "--csv_input", str(real_eval["csv"]), "--max_new_tokens", "12")
    assert [r["prediction"] for r in _predictions(tmp_path)] == [r["prediction"] for r in _predictions(real_eval["out"])]


def test_metadata_from_the_spec_example_evaluates(tmp_path, shared_data_dir):
    """The SPEC §1 example, as written, with its model names pointing at tiny local models."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from panollava.offline.tiny_models import build_tiny_models
    from panollava.module import PanoLLaVAModule

    tiny = build_tiny_models()
    vision_dir = tmp_path / "siglip2-so400m-patch14-224"
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=224, patch_size=56,
                                         vision_use_head=False)).save_pretrained(vision_dir)
    shutil.copy(tiny["tiny-siglip"] / "preprocessor_config.json", vision_dir)
    example = {
        "experiment_name": "ADDDATA_SQ3_1",
        "stage": "finetune",
        "model_config": {
            "vision_name": str(vision_dir),
            "language_model_name": str(tiny["tiny-qwen3"]),
            "resampler_type": "mlp",
            "latent_dimension": 768,
            "image_size": [224, 224],
        },
        "training_config": {"crop_strategy": "anyres_e2p", "learning_rate": 0.0001, "batch_size": 16,
                            "fov_deg": 90.0, "use_vision_processor": True},
        "dataset": {"train_csv": "data/quic360/train.csv", "val_csv": "data/quic360/val.csv", "dataset_name": "quic360"},
    }
    run_dir = tmp_path / "runs" / "ADDDATA_SQ3_1" / "finetune" / "anyres-e2p_mlp"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint_metadata.json").write_text(json.dumps(example, indent=2))
    module = PanoLLaVAModule(model_config=example["model_config"])
    module.configure_model()
    import lightning

    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    name = "siglip2_mlp_anyres-e2p_quic360_epoch05_loss0.4201.ckpt"
    torch.save(checkpoint, run_dir / name)
    os.symlink(name, run_dir / "best.ckpt")
    out = tmp_path / "out"
    metrics = _evaluate(run_dir, out, "--csv_input", str(shared_data_dir / "quic360-sample" / "test.csv"),
                        "--max_samples", "2", "--max_new_tokens", "4")
    assert metrics["num_samples"] == 2
    assert metrics["settings"]["image_size"]["value"] == [224, 224]
    assert metrics["settings"]["latent_dimension"] == {"value": 768, "source": "metadata"}


# -- troubleshooting (SPEC §2) --------------------------------------------------------------------------------------
def test_no_checkpoint_is_a_short_error(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "x" / "finetune" / "anyres-e2p_mlp"
    (run_dir / "lora_weights").mkdir(parents=True)
    (run_dir / "checkpoint_metadata.json").write_text(json.dumps(
        {"experiment_name": "x", "stage": "finetune", "model_config": {"vision_name": "tiny:siglip",
                                                                       "language_model_name": "tiny:qwen3"}}))
    assert main(["test", "--ckpt_dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and str(run_dir.resolve()) in err
    assert "checkpoint_metadata.json" in err and "lora_weights/" in err
    assert "Traceback" not in err


def test_missing_run_directory_is_a_short_error(tmp_path, capsys):
    assert main(["test", "--ckpt_dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert str((tmp_path / "nope").resolve()) in err and "Traceback" not in err


def test_no_metadata_warns_and_uses_the_config(tiny_run, tmp_path, caplog, real_eval):
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run["run_dir"], run_dir, symlinks=True)
    (run_dir / "checkpoint_metadata.json").unlink()
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="panollava"):
        metrics = _evaluate(run_dir, out, "--config", str(PROJECT_ROOT / "configs" / "tiny.yaml"),
                            "--csv_input", str(real_eval["csv"]), "--max_samples", "2", "--max_new_tokens", "4")
    assert "checkpoint_metadata.json" in caplog.text and "--config" in caplog.text
    assert metrics["settings"]["crop_strategy"]["source"] == "config"
    assert metrics["settings"]["vision_name"] == {"value": "tiny:siglip", "source": "config"}


def test_config_metadata_mismatch_warns_once_and_metadata_wins(tiny_run, tmp_path, caplog, real_eval):
    config = tmp_path / "other.yaml"
    config.write_text(
        (PROJECT_ROOT / "configs" / "tiny.yaml").read_text()
        .replace("crop_strategy: anyres_e2p", "crop_strategy: cubemap\n  fov_deg: 100.0")
        .replace("latent_dimension: 64", "latent_dimension: 128")
        .replace("../panollava", str(PROJECT_ROOT / "panollava"))
    )
    with caplog.at_level("WARNING", logger="panollava"):
        metrics = _evaluate(tiny_run["run_dir"], tmp_path / "out", "--config", str(config), "--csv_input",
                            str(real_eval["csv"]), "--max_samples", "2", "--max_new_tokens", "4", "--batch_size", "1")
    mismatch = [r.getMessage() for r in caplog.records if "crop_strategy" in r.getMessage()]
    assert len(mismatch) == 1
    for text in ("crop_strategy", "cubemap", "anyres_e2p", "latent_dimension", "128", "64", "fov_deg", "100"):
        assert text in mismatch[0]
    assert metrics["settings"]["crop_strategy"] == {"value": "anyres_e2p", "source": "metadata"}
    assert metrics["settings"]["batch_size"] == {"value": 1, "source": "cli"}
    # Training-only values of the metadata are recorded, not applied.
    assert metrics["recorded_training"]["learning_rate"] == pytest.approx(0.003)


def test_checkpoint_rule_override(tiny_run, tmp_path, real_eval):
    metrics = _evaluate(tiny_run["run_dir"], tmp_path, "--checkpoint", "last", "--csv_input", str(real_eval["csv"]),
                        "--max_samples", "1", "--max_new_tokens", "2")
    assert metrics["checkpoint"]["rule"] == "last.ckpt link"


def test_predict_without_annotations(tiny_run, tmp_path, real_eval):
    csv = tmp_path / "queries.csv"
    lines = real_eval["csv"].read_text().splitlines()
    csv.write_text("url,query\n" + "\n".join(",".join(line.split(",")[:2]) for line in lines[1:4]) + "\n")
    for image in (real_eval["csv"].parent / "images").iterdir():
        (tmp_path / "images").mkdir(exist_ok=True)
        os.symlink(image, tmp_path / "images" / image.name)
    assert main(["predict", "--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(csv),
                 "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "3"]) == 0
    records = _predictions(tmp_path / "out")
    assert len(records) >= 1 and all(r["references"] == [] for r in records)
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_eval_script_wrapper(tiny_run, tmp_path, real_eval):
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "eval.py"), "--checkpoint-dir", str(tiny_run["run_dir"]),
         "--csv-input", str(real_eval["csv"]), "--max-samples", "3", "--output-dir", str(tmp_path),
         "--log-samples", "--log-interval", "1", "--log-max-samples", "2", "--max_new_tokens", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_predictions(tmp_path)) == 3
    assert "pred:" in result.stdout + result.stderr


def test_validate_reproduces_the_validation_loss_of_training(tiny_run):
    """The best checkpoint's name carries its validation loss; `validate --ckpt_dir` must find the same number
    (same model, same data, same target truncation restored from the metadata)."""
    from panollava.lightning_cli import run_lightning_cli

    cli = run_lightning_cli(["validate", "--ckpt_dir", str(tiny_run["run_dir"])])
    best = parse_checkpoint_filename(os.readlink(tiny_run["run_dir"] / "best.ckpt"))
    assert float(cli.trainer.callback_metrics["val/loss"]) == pytest.approx(best["val_loss"], abs=1e-4)
