"""Settings priority (CLI > metadata > config > defaults), mismatch report, CSV choice."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metadata import metadata_settings, read_metadata
from panollava.schema import METADATA_FILENAME
from panollava.schema import INPUT_KEYS, RUNTIME_KEYS
from panollava.settings import DEFAULT_SETTINGS, merge_settings, resolve_csv, values_equal

SPEC_EXAMPLE = {
    "experiment_name": "ADDDATA_SQ3_1",
    "stage": "finetune",
    "model_config": {
        "vision_name": "google/siglip2-so400m-patch14-224",
        "language_model_name": "Qwen/Qwen3-0.6B",
        "resampler_type": "mlp",
        "latent_dimension": 768,
        "image_size": [224, 224],
    },
    "training_config": {
        "crop_strategy": "anyres_e2p",
        "learning_rate": 0.0001,
        "batch_size": 16,
        "fov_deg": 90.0,
        "use_vision_processor": True,
    },
    "dataset": {
        "train_csv": "data/quic360/train.csv",
        "val_csv": "data/quic360/val.csv",
        "dataset_name": "quic360",
    },
}


def load(tmp_path: Path, data: dict = SPEC_EXAMPLE, **dataset: str):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    data = {**data, "dataset": {**data["dataset"], **dataset}}
    (run / METADATA_FILENAME).write_text(json.dumps(data))
    return read_metadata(run / METADATA_FILENAME)


def test_key_sets():
    assert set(INPUT_KEYS) == {
        "vision_name", "language_model_name", "tokenizer_name", "resampler_type", "latent_dimension",
        "image_size", "image_token", "lora", "crop_strategy", "fov_deg", "overlap_ratio", "num_views",
        "use_vision_processor", "image_mean", "image_std", "image_blind", "max_answer_tokens", "image_root",
        "prompt_template", "system_prompt", "enable_thinking",
    }
    assert set(INPUT_KEYS) | set(RUNTIME_KEYS) == set(DEFAULT_SETTINGS)
    assert DEFAULT_SETTINGS["max_new_tokens"] == 64 and DEFAULT_SETTINGS["do_sample"] is False
    assert DEFAULT_SETTINGS["top_k"] == 0 and DEFAULT_SETTINGS["share_prefix"] is True
    # null: the vision tower's native size (never a guessed 224)
    assert DEFAULT_SETTINGS["image_size"] is None and DEFAULT_SETTINGS["reference_mode"] == "grouped"


def test_default_only():
    merged = merge_settings({}, None, None)
    assert merged["fov_deg"] == 90.0 and merged.sources["fov_deg"] == "default"
    assert merged["num_beams"] == 1 and merged.sources["num_beams"] == "default"


def test_config_over_default():
    merged = merge_settings({}, None, {"overlap_ratio": 0.25, "max_new_tokens": None})
    assert (merged["overlap_ratio"], merged.sources["overlap_ratio"]) == (0.25, "config")
    assert (merged["max_new_tokens"], merged.sources["max_new_tokens"]) == (64, "default")  # None: not given


def test_metadata_over_config(tmp_path):
    meta = metadata_settings(load(tmp_path))
    merged = merge_settings({}, meta, {"vision_name": "other/vision"})
    assert merged["vision_name"] == "google/siglip2-so400m-patch14-224"
    assert merged.sources["vision_name"] == "metadata"


def test_cli_over_metadata(tmp_path):
    meta = metadata_settings(load(tmp_path))
    merged = merge_settings({"fov_deg": 120.0, "num_beams": 3}, meta, {"fov_deg": 100.0, "num_beams": 2})
    assert (merged["fov_deg"], merged.sources["fov_deg"]) == (120.0, "cli")
    assert (merged["num_beams"], merged.sources["num_beams"]) == (3, "cli")


def test_key_missing_from_metadata_comes_from_config(tmp_path):
    meta = metadata_settings(load(tmp_path))  # the SPEC example records no overlap_ratio
    merged = merge_settings({}, meta, {"overlap_ratio": 0.25})
    assert (merged["overlap_ratio"], merged.sources["overlap_ratio"]) == (0.25, "config")
    assert merged["tokenizer_name"] == "Qwen/Qwen3-0.6B"  # derived from the language model


def test_training_only_metadata_values_are_not_applied(tmp_path):
    meta = load(tmp_path)  # records batch_size 16 and learning_rate 1e-4
    merged = merge_settings({}, {**metadata_settings(meta), "batch_size": 16}, {})
    assert (merged["batch_size"], merged.sources["batch_size"]) == (8, "default")
    assert "learning_rate" not in merged.values


def test_null_system_prompt_in_metadata_is_a_value():
    merged = merge_settings({}, {"system_prompt": None}, {"system_prompt": "You are terse."})
    assert (merged["system_prompt"], merged.sources["system_prompt"]) == (None, "metadata")
    assert merged.mismatches == [("system_prompt", "You are terse.", None)]


def test_mismatch_one_warning_listing_each_key(tmp_path):
    meta = metadata_settings(load(tmp_path))
    config = {"image_size": 256, "fov_deg": 90, "crop_strategy": "e2p", "latent_dimension": 768, "seed": 3}
    merged = merge_settings({}, meta, config, config_name="/cfg/x.yaml", metadata_name="/run/meta.json")
    assert merged.mismatches == [("image_size", [256, 256], [224, 224]), ("crop_strategy", "e2p", "anyres_e2p")]
    assert merged["image_size"] == [224, 224] and merged["crop_strategy"] == "anyres_e2p"
    expected = (
        "the config '/cfg/x.yaml' and the checkpoint metadata '/run/meta.json' disagree on 2 setting(s); the "
        "metadata wins (priority: CLI > metadata > config > defaults):\n"
        "  - image_size: config [256, 256], metadata [224, 224]\n"
        '  - crop_strategy: config "e2p", metadata "anyres_e2p"'
    )
    assert merged.warning_message() == expected


def test_mismatch_overridden_by_cli_says_so(tmp_path):
    merged = merge_settings({"fov_deg": 60.0}, {"fov_deg": 90.0}, {"fov_deg": 120.0})
    expected = "  - fov_deg: config 120.0, metadata 90.0 (the CLI overrides both: 60.0)"
    assert merged.warning_message().endswith(expected)


def test_equal_values_are_not_mismatches():
    assert values_equal(224, [224, 224], "image_size")
    assert values_equal(0.1 + 0.2, 0.3)
    assert values_equal(["q_proj", "v_proj"], ["v_proj", "q_proj"])
    assert not values_equal(True, 1)
    metadata = {"image_size": [224, 224], "fov_deg": 90.0}
    merged = merge_settings({}, metadata, {"image_size": 224, "fov_deg": 90})
    assert merged.mismatches == [] and merged.warning_message() is None


def test_provenance_is_json_able(tmp_path):
    cli = {"seed": 5, "output_dir": tmp_path}
    merged = merge_settings(cli, metadata_settings(load(tmp_path)), {"num_workers": 2})
    provenance = merged.provenance()
    assert provenance["seed"] == {"value": 5, "source": "cli"}
    assert provenance["vision_name"]["source"] == "metadata"
    assert provenance["num_workers"] == {"value": 2, "source": "config"}
    assert provenance["output_dir"] == {"value": str(tmp_path), "source": "cli"}
    json.dumps(provenance)


def test_invalid_merged_value_names_its_source():
    expected = r"the config '/c\.yaml': crop_strategy = \"fisheye\" is not valid \(Expected a .*'anyres_e2p'"
    with pytest.raises(InvalidInputError, match=expected):
        merge_settings({}, None, {"crop_strategy": "fisheye"}, config_name="/c.yaml")


def test_require_model_names():
    with pytest.raises(InvalidInputError, match=r"vision_name, language_model_name not set"):
        merge_settings({}, None, {}).require()


# --- CSV choice ---------------------------------------------------------------------------------------------


def test_csv_input_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.csv").write_text("url,query,annotation\n")
    meta = load(tmp_path, test_csv="test.csv")
    path, reason, _ = resolve_csv("mine.csv", meta, meta.path.parent)
    assert path == tmp_path / "mine.csv"
    expected = f"CSV from --csv_input: {tmp_path / 'mine.csv'} (relative to the current directory); given"
    assert reason.startswith(expected)


def test_metadata_test_csv_relative_to_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = load(tmp_path, test_csv="test.csv")
    (meta.path.parent / "test.csv").write_text("url,query,annotation\n")
    path, reason, _ = resolve_csv(None, meta, meta.path.parent)
    assert path == meta.path.parent / "test.csv"
    assert "metadata dataset.test_csv" in reason and "(relative to the run directory)" in reason


def test_current_directory_before_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = load(tmp_path, test_csv="test.csv")
    (meta.path.parent / "test.csv").write_text("")
    (tmp_path / "test.csv").write_text("")
    assert resolve_csv(None, meta, meta.path.parent)[0] == tmp_path / "test.csv"


def test_val_csv_fallback_when_no_test_csv(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "quic360").mkdir(parents=True)
    (tmp_path / "data" / "quic360" / "val.csv").write_text("")
    meta = load(tmp_path)
    with caplog.at_level(logging.WARNING, logger="panollava.settings"):
        path, reason, _ = resolve_csv(None, meta, meta.path.parent)
    assert path == tmp_path / "data" / "quic360" / "val.csv"
    assert "records no dataset.test_csv, so the validation split is evaluated" in reason
    assert [r.getMessage() for r in caplog.records if r.name == "panollava.settings"] == [reason]


def test_recorded_test_csv_missing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = load(tmp_path, test_csv="gone.csv")
    run = meta.path.parent
    with pytest.raises(
        InputNotFoundError,
        match=re.escape(
            f"CSV from metadata dataset.test_csv 'gone.csv' not found: no such file "
            f"(tried '{tmp_path}/gone.csv', '{run}/gone.csv'). "
            f"Pass --csv_input with an existing CSV file (the metadata's dataset.val_csv is "
            f"'data/quic360/val.csv' if you mean the validation split)."
        ),
    ):
        resolve_csv(None, meta, run)


def test_no_csv_anywhere(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"no CSV to evaluate: --csv_input is not given"):
        resolve_csv(None, None, tmp_path)
