"""The settings schema: every key × every source, the hybrid CSV and image_root cases, --help, --print_config,
and checkpoints/metadata written before the schema."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from jsonargparse import Namespace

import panollava.lightning_cli  # noqa: F401  (imports lightning outside capsys: its log handlers keep sys.stderr)
from panollava.errors import InvalidInputError
from panollava.schema import INPUT_KEYS, SETTINGS, defaults, validate_setting
from panollava.settings import flat_settings, merge_settings

FIXTURES = Path(__file__).parent / "fixtures"

# One value per key, different from its default (and valid).
SAMPLES = {
    "vision_name": "org/vision-a", "language_model_name": "org/lm-a", "tokenizer_name": "org/tok-a",
    "resampler_type": "identity", "latent_dimension": 32, "image_size": [64, 48], "image_token": "<img>",
    "lora": {"r": 4, "alpha": 16.5, "dropout": 0.1, "target_modules": ["q_proj"]},
    "prompt_template": "Say {query}.", "system_prompt": "Be terse.", "enable_thinking": True,
    "crop_strategy": "cubemap", "fov_deg": 100.0, "overlap_ratio": 0.25, "num_views": 4,
    "use_vision_processor": False, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6],
    "image_blind": True, "max_answer_tokens": 16, "image_root": "/images",
    "max_new_tokens": 5, "min_new_tokens": 2, "num_beams": 2, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5,
    "repetition_penalty": 1.2, "seed": 3, "share_prefix": False, "compile_decode": True,
    "batch_size": 2, "max_samples": 7, "num_workers": 1, "reference_mode": "per_row",
    "csv_input": "/data/x.csv", "output_dir": "/out", "overwrite": True, "strict_metrics": True, "progress": False,
}
OTHER = {  # a second value per key, for "two sources disagree"
    **{k: v for k, v in SAMPLES.items()},
    "vision_name": "org/vision-b", "language_model_name": "org/lm-b", "tokenizer_name": "org/tok-b",
    "resampler_type": "avgpool", "latent_dimension": 48, "image_size": [96, 96], "image_token": "<pic>",
    "lora": {"r": 2, "alpha": 3.0, "dropout": 0.0, "target_modules": ["v_proj"]},
    "prompt_template": "Tell {query}.", "system_prompt": "Be long.", "enable_thinking": False,
    "crop_strategy": "e2p", "fov_deg": 60.0, "overlap_ratio": 0.1, "num_views": 6,
    "use_vision_processor": True, "image_mean": [0.3, 0.3, 0.3], "image_std": [0.2, 0.2, 0.2],
    "image_blind": False, "max_answer_tokens": 20, "image_root": "/other",
}
SOURCES = ("flag", "init_arg_flag", "metadata", "config", "default")


def _namespace(path: str, value) -> Namespace:
    ns = Namespace()
    ns[path] = value
    return ns


def _given(key: str, source: str, value) -> tuple[dict, dict, dict]:
    """(cli, metadata, config) flat dicts for one key given by one source, through the parser's namespaces."""
    setting = SETTINGS[key]
    cli: dict = {}
    metadata: dict = {}
    config: dict = {}
    if source == "flag":
        cli = flat_settings(_namespace(setting.flag, value))
    elif source == "init_arg_flag":
        cli = flat_settings(_namespace(setting.targets[0], value))
    elif source == "metadata":
        metadata = {key: value}
    elif source == "config":
        config = flat_settings(_namespace((setting.targets or (setting.flag,))[0], value))
    return cli, metadata, config


def test_every_key_has_a_sample_a_doc_and_a_place():
    assert set(SAMPLES) == set(SETTINGS)
    for key, setting in SETTINGS.items():
        assert setting.doc, key
        assert setting.targets or setting.flag, key
        assert validate_setting(key, SAMPLES[key]) == SAMPLES[key], key  # the samples are valid and plain
        assert SAMPLES[key] != defaults()[key], key


CASES = [(key, source) for key in sorted(SETTINGS) for source in SOURCES
         if not (source == "flag" and SETTINGS[key].flag is None or source == "init_arg_flag" and not SETTINGS[key].targets)]


@pytest.mark.parametrize(("key", "source"), CASES)
def test_each_key_from_each_source(key, source):
    value = SAMPLES[key]
    cli, metadata, config = _given(key, source, value)
    merged = merge_settings(cli, metadata, config)
    expected_source = {"flag": "cli", "init_arg_flag": "cli"}.get(source, source)
    if source == "metadata" and key not in INPUT_KEYS:  # the metadata never sets run-time keys
        expected_source = "default"
    expected = value if expected_source != "default" else defaults()[key]
    if key == "tokenizer_name" and expected is None:
        expected = merged["language_model_name"]
    assert (merged[key], merged.sources[key]) == (expected, expected_source)
    assert merged.provenance()[key] == {"value": expected, "source": expected_source}


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_priority_when_every_source_gives_the_key(key):
    """CLI > metadata > config (metadata only for input keys); the one warning names the key and both values."""
    cli = _given(key, "init_arg_flag" if SETTINGS[key].targets else "flag", SAMPLES[key])[0]
    metadata, config = {key: OTHER[key]}, _given(key, "config", OTHER[key] if key in INPUT_KEYS else SAMPLES[key])[2]
    assert (merge_settings(cli, metadata, config)[key], merge_settings(cli, metadata, config).sources[key]) == (
        SAMPLES[key], "cli")
    if key in INPUT_KEYS:
        config = _given(key, "config", SAMPLES[key])[2]
        merged = merge_settings({}, metadata, config, config_name="/c.yaml", metadata_name="/m.json")
        assert (merged[key], merged.sources[key]) == (OTHER[key], "metadata")
        assert f"  - {key}: config" in merged.warning_message()
        overridden = merge_settings(cli, metadata, {}, metadata_name="/m.json")
        assert overridden.cli_overrides == [(key, OTHER[key], SAMPLES[key])]
        assert "the command line overrides the checkpoint metadata '/m.json'" in overridden.warning_message()
    else:
        merged = merge_settings({}, {key: OTHER[key]}, config)
        assert merged.sources[key] == "config"


def test_invalid_values_are_refused_with_the_source():
    with pytest.raises(InvalidInputError, match=r"the command line: fov_deg = 200 is not valid .*in \(0, 180\)"):
        merge_settings({"fov_deg": 200}, None, None)
    with pytest.raises(InvalidInputError, match=r"the config '/c\.yaml': top_k = -1 is not valid"):
        merge_settings({}, None, {"top_k": -1}, config_name="/c.yaml")


def test_lora_flag_changes_one_field():
    merged = merge_settings({"lora": {"r": 4}}, {"lora": dict(SAMPLES["lora"], r=8)}, None)
    assert merged["lora"] == dict(SAMPLES["lora"], r=4) and merged.sources["lora"] == "cli"


# -- the plan: hybrid CSV, image_root -------------------------------------------------------------------------------
@pytest.fixture()
def run_dir(tmp_path):
    """A run directory with metadata (test_csv and image_root recorded) and an (unloaded) checkpoint file."""
    run = tmp_path / "runs" / "e" / "finetune" / "anyres-e2p_mlp"
    run.mkdir(parents=True)
    for name in ("meta_test.csv", "config_test.csv", "cli_test.csv"):
        (tmp_path / name).write_text("url,query,annotation\n")
    (run / "x.ckpt").write_bytes(b"not loaded by the plan")
    os.symlink("x.ckpt", run / "best.ckpt")
    meta = json.loads((FIXTURES / "checkpoint_metadata_v1.json").read_text())
    meta["dataset"].update(test_csv=str(tmp_path / "meta_test.csv"), image_root="/meta_images")
    (run / "checkpoint_metadata.json").write_text(json.dumps(meta))
    return run


def _plan(run_dir, **kwargs):
    from panollava.evaluation.plan import plan_evaluation

    kwargs.setdefault("cli", {})
    kwargs.setdefault("config", {})
    return plan_evaluation("test", ckpt_dir=str(run_dir), **kwargs)


def test_hybrid_csv_metadata_beats_the_config(run_dir):
    tmp = run_dir.parents[3]
    plan = _plan(run_dir, config={"image_root": "/config_images"}, config_csv=str(tmp / "config_test.csv"),
                 config_name="/c.yaml")
    assert plan.csv_path == tmp / "meta_test.csv"
    assert plan.merged.sources["csv_input"] == "metadata"
    assert "given on the command line" not in plan.provenance["dataset"]["reason"]
    assert plan.provenance["dataset"]["path"] == str(tmp / "meta_test.csv")
    assert plan.provenance["settings"]["csv_input"] == {"value": str(tmp / "meta_test.csv"), "source": "metadata"}
    assert plan.provenance["settings"]["image_root"] == {"value": "/meta_images", "source": "metadata"}
    assert plan.targets()["data.test_csv"] == str(tmp / "meta_test.csv")


def test_csv_typed_as_a_data_flag_is_cli_and_image_root_follows_the_csv(run_dir):
    tmp = run_dir.parents[3]
    plan = _plan(run_dir, config={"image_root": "/config_images"}, cli_csv=(str(tmp / "cli_test.csv"), "--data.test_csv"))
    assert plan.merged.sources["csv_input"] == "cli"
    assert plan.provenance["dataset"]["reason"].startswith("CSV from --data.test_csv")
    # the metadata's image_root belongs to the metadata's CSV
    assert plan.provenance["settings"]["image_root"] == {"value": "/config_images", "source": "config"}


def test_image_root_flag_beats_the_metadata(run_dir):
    plan = _plan(run_dir, cli={"image_root": "/cli_images"})
    assert plan.provenance["settings"]["image_root"] == {"value": "/cli_images", "source": "cli"}
    assert plan.targets()["data.image_root"] == "/cli_images"


def test_config_csv_when_the_metadata_has_none(run_dir):
    tmp = run_dir.parents[3]
    meta = json.loads((run_dir / "checkpoint_metadata.json").read_text())
    meta["dataset"]["test_csv"] = None
    (run_dir / "checkpoint_metadata.json").write_text(json.dumps(meta))
    plan = _plan(run_dir, config_csv=str(tmp / "config_test.csv"))
    assert plan.merged.sources["csv_input"] == "config" and plan.csv_path == tmp / "config_test.csv"


def test_plan_applies_every_recorded_input(run_dir):
    targets = _plan(run_dir, cli={"num_views": 4}).targets()
    assert targets["data.image_mean"] == [0.5, 0.5, 0.5] and targets["data.image_std"] == [0.5, 0.5, 0.5]
    assert targets["data.image_blind"] is False and targets["model.max_answer_tokens"] == 48
    assert targets["data.num_views"] == 4  # typed: beats the metadata's 8
    assert targets["model.generation.top_k"] == 0 and targets["model.lora"]["alpha"] == 16.0


# -- the real CLI: --help, --print_config, old checkpoints ----------------------------------------------------------
def test_test_help_lists_each_setting_with_its_doc(capsys):
    from panollava.cli import main

    assert main(["test", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for key, setting in SETTINGS.items():
        flag = f"--{setting.flag}" if setting.flag else f"--{setting.targets[0]}"
        if key == "lora":  # Optional[LoraSettings]: jsonargparse lists its fields under --model.lora.help
            assert "--model.lora.help Show the help for LoraSettings" in text
            continue
        assert flag in text, key
        assert " ".join(setting.doc.split())[:40] in text, key


def test_print_config_shows_the_merged_settings(tiny_run, capsys):
    from panollava.cli import main

    status = main(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--data.num_views", "4", "--top_k", "3",
                   "--print_config"])
    out = capsys.readouterr().out
    assert status == 0
    assert "num_views: 4" in out and "#   num_views: 4  (cli)" in out
    assert "#   top_k: 3  (cli)" in out and "#   crop_strategy: anyres_e2p  (metadata)" in out
    assert "#   max_answer_tokens: 48  (metadata)" in out and "#   batch_size: 8  (default)" in out
    assert "#   csv_input:" in out and "(metadata)" in out.split("#   csv_input:")[1].splitlines()[0]


def test_checkpoint_and_metadata_written_before_the_schema_load(tiny_run, tmp_path):
    """A checkpoint whose hparams are those written before the schema (plain dicts, int LoRA alpha) loads with
    weights_only, and the old metadata drives the evaluation settings."""
    import torch

    from panollava.module import PanoLLaVAModule

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run_dir"], run, symlinks=True)
    shutil.copy(FIXTURES / "checkpoint_metadata_v1.json", run / "checkpoint_metadata.json")
    checkpoint = torch.load(run / "best.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] = json.loads((FIXTURES / "checkpoint_hparams_v1.json").read_text())
    torch.save(checkpoint, run / "old.ckpt")
    module = PanoLLaVAModule.load_from_checkpoint(run / "old.ckpt", weights_only=True, lora_dir=str(run / "lora_weights"))
    assert module.hparams.lora["alpha"] == 16 and module.hparams.generation["top_k"] == 0
    assert module.hparams.model_config["image_size"] == [32, 32]

    # ... and evaluates unchanged through test --ckpt_dir: the settings come from the old metadata.
    from panollava.cli import main

    mini = Path(__file__).resolve().parents[1] / "panollava" / "assets" / "quic360-mini" / "test.csv"
    out = tmp_path / "eval"
    assert main(["test", "--ckpt_dir", str(run), "--ckpt_path", str(run / "old.ckpt"), "--csv_input", str(mini),
                 "--max_samples", "2", "--max_new_tokens", "4", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["metadata"]["schema_version"] == 2  # migrated on read
    for key in ("crop_strategy", "image_size", "vision_name", "lora"):
        assert metrics["settings"][key]["source"] == "metadata", key
