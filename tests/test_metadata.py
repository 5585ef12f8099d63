"""checkpoint_metadata.json: tolerant reading, validation messages, atomic complete writing."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metadata import (
    DEFAULT_LORA,
    METADATA_FILENAME,
    SCHEMA_VERSION,
    build_metadata,
    metadata_recorded_training,
    metadata_settings,
    read_metadata,
    write_metadata,
)
from panollava.schema import DEFAULT_PROMPT_TEMPLATE

# SPEC §1, verbatim: this must load exactly as written.
SPEC_EXAMPLE = """\
{
  "experiment_name": "ADDDATA_SQ3_1",
  "stage": "finetune",
  "model_config": {
    "vision_name": "google/siglip2-so400m-patch14-224",
    "language_model_name": "Qwen/Qwen3-0.6B",
    "resampler_type": "mlp",
    "latent_dimension": 768,
    "image_size": [224, 224]
  },
  "training_config": {
    "crop_strategy": "anyres_e2p",
    "learning_rate": 0.0001,
    "batch_size": 16,
    "fov_deg": 90.0,
    "use_vision_processor": true
  },
  "dataset": {
    "train_csv": "data/quic360/train.csv",
    "val_csv": "data/quic360/val.csv",
    "dataset_name": "quic360"
  }
}
"""

MINIMAL = {"model_config": {"vision_name": "v", "language_model_name": "lm"}}


def write_json(tmp_path: Path, data: object) -> Path:
    path = tmp_path / METADATA_FILENAME
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def with_model(**model: object) -> dict:
    return {"model_config": {**MINIMAL["model_config"], **model}}


def test_spec_example_loads_as_written_and_reports_defaults(tmp_path, caplog):
    path = write_json(tmp_path, SPEC_EXAMPLE)
    with caplog.at_level(logging.WARNING, logger="panollava.metadata"):
        meta = read_metadata(path)

    assert meta.path == path.absolute()
    assert meta.raw == json.loads(SPEC_EXAMPLE)
    assert meta.experiment_name == "ADDDATA_SQ3_1"
    assert meta.stage == "finetune"
    assert meta.model_config["vision_name"] == "google/siglip2-so400m-patch14-224"
    assert meta.model_config["image_size"] == [224, 224]
    assert meta.training_config["crop_strategy"] == "anyres_e2p"
    assert meta.dataset["dataset_name"] == "quic360"
    assert meta.dataset["test_csv"] is None
    assert meta.schema_version == SCHEMA_VERSION
    # Missing extras fall back to the defaults, and each fallback is reported once.
    assert meta.model_config["tokenizer_name"] == "Qwen/Qwen3-0.6B"
    assert meta.model_config["image_token"] == "<|image_pad|>"
    assert meta.model_config["lora"] == DEFAULT_LORA
    assert meta.training_config["overlap_ratio"] == 0.5
    assert meta.prompt["template"] == DEFAULT_PROMPT_TEMPLATE
    assert meta.source_version == 1  # no schema_version: read as schema 1, migrated
    assert set(meta.defaults_used) == {
        "schema_version",
        "model_config.tokenizer_name",
        "model_config.image_token",
        "model_config.lora",
        "training_config.overlap_ratio",
        "training_config.num_views",
        "training_config.image_mean",
        "training_config.image_std",
        "training_config.image_blind",
        "training_config.max_answer_tokens",
        "prompt",
    }
    assert meta.training_config["image_mean"] is None  # not recorded: read from the processor, never guessed
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == len(meta.defaults_used)
    for key in meta.defaults_used:
        assert sum(f": {key} is not recorded" in m for m in warned) == 1, key
    assert any("model_config.image_token is not recorded" in m and "<|image_pad|>" in m for m in warned)
    assert all(str(path) in m for m in warned)


def test_unknown_keys_are_kept(tmp_path):
    meta = read_metadata(write_json(tmp_path, {**with_model(extra_size=3), "notes": {"a": 1}}))
    assert meta.data["notes"] == {"a": 1}
    assert meta.model_config["extra_size"] == 3


def test_int_image_size_is_normalised(tmp_path):
    meta = read_metadata(write_json(tmp_path, with_model(image_size=256)))
    assert meta.model_config["image_size"] == [256, 256]


def test_read_accepts_the_run_directory(tmp_path):
    write_json(tmp_path, MINIMAL)
    assert read_metadata(tmp_path).path == (tmp_path / METADATA_FILENAME).absolute()


def test_missing_file(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"metadata not found: '.*nope\.json' does not exist"):
        read_metadata(tmp_path / "nope.json")


def test_invalid_json_names_line_and_column(tmp_path):
    path = write_json(tmp_path, '{\n  "stage": "finetune",\n  oops\n}')
    with pytest.raises(InvalidInputError, match=rf"'{path}' is not valid JSON: .* at line 3, column 3"):
        read_metadata(path)


def test_top_level_not_an_object(tmp_path):
    path = write_json(tmp_path, "[1, 2]")
    with pytest.raises(InvalidInputError, match=r"top level must be a JSON object .*found a list"):
        read_metadata(path)


@pytest.mark.parametrize("key", ["vision_name", "language_model_name"])
def test_missing_required_model_name(tmp_path, key):
    model = dict(MINIMAL["model_config"])
    del model[key]
    path = write_json(tmp_path, {"model_config": model})
    expected = rf"'{re.escape(str(path))}': model_config\.{key} is missing; it has no default"
    with pytest.raises(InvalidInputError, match=expected):
        read_metadata(path)


def test_missing_model_config(tmp_path):
    with pytest.raises(InvalidInputError, match=r"model_config is missing; it must name .*vision_name"):
        read_metadata(write_json(tmp_path, {"stage": "finetune"}))


def test_wrong_image_size_type(tmp_path):
    path = write_json(tmp_path, with_model(image_size="abc"))
    with pytest.raises(
        InvalidInputError,
        match=rf"'{re.escape(str(path))}': model_config\.image_size = \"abc\" is not valid \(.*\)\. Expected: "
        rf"Size of every view, \[H, W\] or one int",
    ):
        read_metadata(path)


def test_fov_not_a_number(tmp_path):
    path = write_json(tmp_path, {**MINIMAL, "training_config": {"fov_deg": "wide"}})
    with pytest.raises(InvalidInputError, match=r"training_config\.fov_deg = \"wide\" is not valid .*in \(0, 180\)"):
        read_metadata(path)


@pytest.mark.parametrize("fov", [180.0, 200.0, 0.0])
def test_fov_range_is_the_views_range(tmp_path, fov):
    """One bound for the metadata and the views code (schema 1 accepted up to 360, which views refused)."""
    from panollava.data.views import ViewConfig

    path = write_json(tmp_path, {**MINIMAL, "training_config": {"fov_deg": fov}})
    with pytest.raises(InvalidInputError, match=r"training_config\.fov_deg = .* restriction v>0\.0 and v<180\.0"):
        read_metadata(path)
    with pytest.raises(InvalidInputError, match="fov_deg must lie in the open interval"):
        ViewConfig(fov_deg=fov).validate()


def test_lora_alpha_stays_a_float(tmp_path):
    meta = read_metadata(write_json(tmp_path, with_model(lora={"r": 8, "alpha": 16.5})))
    assert meta.model_config["lora"]["alpha"] == 16.5


def test_unknown_stage(tmp_path):
    path = write_json(tmp_path, {**MINIMAL, "stage": "pretrain"})
    with pytest.raises(InvalidInputError, match=r"stage must be one of 'vision', 'resampler', 'finetune'"):
        read_metadata(path)


def test_unknown_crop_strategy(tmp_path):
    path = write_json(tmp_path, {**MINIMAL, "training_config": {"crop_strategy": "fisheye"}})
    expected = r"training_config\.crop_strategy = \"fisheye\" is not valid \(Expected a .*'anyres_e2p'"
    with pytest.raises(InvalidInputError, match=expected):
        read_metadata(path)


def test_unknown_resampler(tmp_path):
    path = write_json(tmp_path, with_model(resampler_type="perceiver"))
    expected = r"resampler_type = \"perceiver\" is not valid \(Expected a .*'mlp', 'identity', 'avgpool'"
    with pytest.raises(InvalidInputError, match=expected):
        read_metadata(path)


def test_bad_lora_field(tmp_path):
    path = write_json(tmp_path, with_model(lora={"r": 0}))
    with pytest.raises(InvalidInputError, match=r"model_config\.lora = \{\"r\": 0\} is not valid \(Not of type PositiveInt"):
        read_metadata(path)


def test_partial_lora_fills_fields_and_null_lora_means_none(tmp_path):
    meta = read_metadata(write_json(tmp_path, with_model(lora={"r": 8})))
    assert meta.model_config["lora"]["r"] == 8
    assert meta.model_config["lora"]["alpha"] == 64.0
    assert "model_config.lora.alpha" in meta.defaults_used
    meta = read_metadata(write_json(tmp_path, with_model(lora=None)))
    assert meta.model_config["lora"] is None
    assert metadata_settings(meta)["lora"] is None


def test_settings_flatten_only_recorded_model_keys(tmp_path):
    meta = read_metadata(write_json(tmp_path, SPEC_EXAMPLE))
    settings = metadata_settings(meta)
    assert settings == {
        "vision_name": "google/siglip2-so400m-patch14-224",
        "language_model_name": "Qwen/Qwen3-0.6B",
        "resampler_type": "mlp",
        "latent_dimension": 768,
        "image_size": [224, 224],
        "crop_strategy": "anyres_e2p",
        "fov_deg": 90.0,
        "use_vision_processor": True,
    }


def test_recorded_training_values_are_separate(tmp_path):
    meta = read_metadata(write_json(tmp_path, SPEC_EXAMPLE))
    assert metadata_recorded_training(meta) == {"learning_rate": 0.0001, "batch_size": 16}


def full_metadata(**overrides: object) -> dict:
    kwargs: dict = dict(
        experiment_name="exp",
        stage="finetune",
        model_config={
            "vision_name": "google/siglip2-so400m-patch16-256",
            "language_model_name": "Qwen/Qwen3-0.6B",
            "image_size": 256,
            "resampler_hidden_dim": 1024,
        },
        training_config={"learning_rate": 2e-4, "batch_size": 4, "max_epochs": 3, "seed": 7},
        dataset={"train_csv": Path("data/quic360/train.csv"), "test_csv": "data/quic360/test.csv"},
        checkpoints={"best": {"file": "a.ckpt", "val_loss": 0.4, "epoch": 1},
                     "all": [{"file": "a.ckpt", "epoch": 1, "step": 10, "val_loss": 0.4}]},
        checkpoint_contents={"state_dict": ["projector", "resampler", "lora"]},
        lora_weights="lora_weights",
        library_versions={"torch": "2.13.0", "python": "3.11.7"},
    )
    kwargs.update(overrides)
    return build_metadata(**kwargs)


def test_build_metadata_is_complete():
    data = full_metadata()
    assert data["schema_version"] == SCHEMA_VERSION
    model = data["model_config"]
    assert model["image_size"] == [256, 256]
    assert model["tokenizer_name"] == "Qwen/Qwen3-0.6B"
    assert model["lora"]["target_modules"][0] == "q_proj"
    assert model["resampler_hidden_dim"] == 1024
    assert data["training_config"]["crop_strategy"] == "anyres_e2p"
    assert data["training_config"]["seed"] == 7
    assert data["dataset"]["dataset_name"] == "train"  # the training CSV's stem
    assert data["dataset"]["train_csv"] == "data/quic360/train.csv"
    assert data["checkpoints"]["last"] is None
    assert data["checkpoints"]["best"] == {"file": "a.ckpt", "val_loss": 0.4, "epoch": 1}
    assert data["prompt"]["template"] == DEFAULT_PROMPT_TEMPLATE
    assert data["created_at"] and data["updated_at"]


def test_library_versions_read_without_importing():
    data = full_metadata(library_versions=None)
    assert set(data["library_versions"]) == {"torch", "lightning", "transformers", "peft", "python"}


def test_write_then_read_round_trip_has_no_defaults(tmp_path, caplog):
    data = full_metadata()
    path = tmp_path / "run" / METADATA_FILENAME  # the missing folder is created
    write_metadata(path, data)
    with caplog.at_level(logging.WARNING):
        meta = read_metadata(path)
    assert meta.defaults_used == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert meta.data == data
    assert [p.name for p in path.parent.iterdir()] == [METADATA_FILENAME]  # no tmp file left behind
    assert path.read_text().startswith('{\n  "schema_version": 2')


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / METADATA_FILENAME
    write_metadata(path, full_metadata(experiment_name="old"))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_metadata(path, full_metadata(experiment_name="new"))
    assert json.loads(path.read_text())["experiment_name"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [METADATA_FILENAME]


def test_write_validates(tmp_path):
    data = full_metadata()
    data["training_config"]["overlap_ratio"] = 1.5
    with pytest.raises(InvalidInputError, match=r"overlap_ratio = 1\.5 is not valid .*v>=0\.0 and v<1\.0"):
        write_metadata(tmp_path / METADATA_FILENAME, data)
    assert not (tmp_path / METADATA_FILENAME).exists()


def test_build_requires_model_names():
    with pytest.raises(InvalidInputError, match=r"model_config\.language_model_name is missing"):
        build_metadata(experiment_name="e", stage="finetune", model_config={"vision_name": "v"})


FIXTURES = Path(__file__).parent / "fixtures"


def test_metadata_written_before_the_schema_loads_unchanged(caplog):
    """tests/fixtures/checkpoint_metadata_v1.json: what `fit --config configs/tiny.yaml` wrote before the schema."""
    with caplog.at_level(logging.WARNING, logger="panollava.metadata"):
        meta = read_metadata(FIXTURES / "checkpoint_metadata_v1.json")
    assert meta.source_version == 1 and meta.schema_version == SCHEMA_VERSION and meta.defaults_used == []
    assert not caplog.records  # everything it records is read as written
    settings = metadata_settings(meta)
    assert settings["image_mean"] == [0.5, 0.5, 0.5] and settings["num_views"] == 8
    assert settings["max_answer_tokens"] == 48 and settings["image_blind"] is False
    assert settings["lora"]["alpha"] == 16.0 and isinstance(settings["lora"]["alpha"], float)
    assert meta.data["generation"]["top_k"] == 0 and meta.data["generation"]["share_prefix"] is False  # migrated
    assert metadata_recorded_training(meta)["learning_rate"] == 0.003


def test_written_metadata_records_every_input_setting():
    from panollava.schema import INPUT_KEYS, SETTINGS

    data = full_metadata()
    for key in INPUT_KEYS:
        section, name = SETTINGS[key].metadata_path
        assert name in data[section], key
