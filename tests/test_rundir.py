"""Run-directory resolution: naming, links, one test per checkpoint rule and per failure mode."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.metadata import build_metadata, write_metadata
from panollava.schema import METADATA_FILENAME
from panollava.rundir import (
    RULE_BEST,
    RULE_LAST,
    RULE_NEWEST,
    RULE_PATH,
    banner_lines,
    checkpoint_filename,
    crop_short,
    find_run_dir_from_config,
    parse_checkpoint_filename,
    resolve_run_dir,
    run_dir_path,
    update_link,
    vision_short,
)

VISION = "google/siglip2-so400m-patch14-224"
CKPT_1 = "siglip2_mlp_anyres-e2p_quic360_epoch01_loss0.5000.ckpt"
CKPT_2 = "siglip2_mlp_anyres-e2p_quic360_epoch02_loss0.4201.ckpt"
CKPT_3 = "siglip2_mlp_anyres-e2p_quic360_epoch03_loss0.4500.ckpt"


def make_run(
    tmp_path: Path,
    ckpts: tuple[str, ...] = (CKPT_1, CKPT_2, CKPT_3),
    best: str | None = CKPT_2,
    last: str | None = CKPT_3,
    metadata: bool = True,
    lora: bool = True,
) -> Path:
    """A run directory as training writes it; checkpoint mtimes increase with the epoch."""
    run = tmp_path / "runs" / "exp" / "finetune" / "anyres-e2p_mlp"
    run.mkdir(parents=True)
    for i, name in enumerate(ckpts):
        (run / name).write_bytes(b"ckpt")
        os.utime(run / name, (1_000_000 + i * 100, 1_000_000 + i * 100))
    if best:
        os.symlink(best, run / "best.ckpt")
    if last:
        os.symlink(last, run / "last.ckpt")
    if metadata:
        write_metadata(
            run / METADATA_FILENAME,
            build_metadata(
                experiment_name="exp",
                stage="finetune",
                model_config={"vision_name": VISION, "language_model_name": "Qwen/Qwen3-0.6B"},
                checkpoints={"best": {"file": CKPT_2, "val_loss": 0.4201, "epoch": 2}},
                lora_weights="lora_weights" if lora else None,
                library_versions={},
            ),
        )
    if lora:
        (run / "lora_weights").mkdir()
        (run / "lora_weights" / "adapter_config.json").write_text("{}")
        (run / "lora_weights" / "adapter_model.safetensors").write_bytes(b"")
    return run


# --- naming -------------------------------------------------------------------------------------------------


def test_short_names():
    assert crop_short("anyres_e2p") == "anyres-e2p"
    assert crop_short("sliding_window") == "sliding-window"
    assert vision_short("google/siglip2-so400m-patch16-256") == "siglip2"
    assert vision_short("/x/tiny-siglip") == "tiny"
    assert vision_short("/x/tiny-siglip/") == "tiny"
    assert vision_short("my_vit-base") == "my-vit"


def test_run_dir_path():
    expected = Path("runs/EXP/finetune/anyres-e2p_mlp")
    assert run_dir_path("runs", "EXP", "finetune", "anyres_e2p", "mlp") == expected
    with pytest.raises(InvalidInputError, match=r"stage must be one of vision, resampler, finetune, found"):
        run_dir_path("runs", "EXP", "x", "anyres_e2p", "mlp")


def test_checkpoint_name_round_trip():
    name = checkpoint_filename(
        "google/siglip2-so400m-patch16-256", "mlp", "anyres_e2p", "quic360", epoch=5, val_loss=0.42014
    )
    assert name == "siglip2_mlp_anyres-e2p_quic360_epoch05_loss0.4201.ckpt"
    assert parse_checkpoint_filename(Path("/any") / name) == {
        "vision_short": "siglip2",
        "resampler_type": "mlp",
        "crop_short": "anyres-e2p",
        "dataset_name": "quic360",
        "epoch": 5,
        "val_loss": 0.4201,
    }
    odd = checkpoint_filename("/m/tiny_vit", "avgpool", "sliding_window", "quic360_v2", 12, 1.5)
    assert parse_checkpoint_filename(odd)["dataset_name"] == "quic360_v2"
    assert parse_checkpoint_filename(odd)["epoch"] == 12
    assert parse_checkpoint_filename("last.ckpt") is None
    assert parse_checkpoint_filename("epoch=3-step=10.ckpt") is None


def test_update_link_is_relative_and_replaced_atomically(tmp_path):
    run = make_run(tmp_path)
    update_link(run / "best.ckpt", run / CKPT_1)
    assert os.readlink(run / "best.ckpt") == CKPT_1  # relative: the run directory can be moved
    assert (run / "best.ckpt").resolve() == (run / CKPT_1).resolve()
    assert not [p for p in run.iterdir() if ".tmp" in p.name]

    other = tmp_path / "elsewhere" / "x.ckpt"
    other.parent.mkdir()
    other.write_bytes(b"")
    update_link(run / "new.ckpt", other)
    assert os.readlink(run / "new.ckpt") == os.path.join("..", "..", "..", "..", "elsewhere", "x.ckpt")
    assert (run / "new.ckpt").resolve() == other.resolve()


def test_update_link_refuses_a_missing_target(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot link '.*best\.ckpt' to '.*gone\.ckpt': no such"):
        update_link(tmp_path / "best.ckpt", tmp_path / "gone.ckpt")
    assert not (tmp_path / "best.ckpt").is_symlink()


# --- checkpoint rules ---------------------------------------------------------------------------------------


def test_best_link_first(tmp_path):
    run = make_run(tmp_path)
    resolved = resolve_run_dir(run)
    assert resolved.checkpoint_path == run / CKPT_2
    assert resolved.checkpoint_rule == RULE_BEST
    assert "lowest validation loss" in resolved.checkpoint_reason
    assert resolved.run_dir == run and resolved.run_dir.is_absolute()
    assert resolved.metadata is not None and resolved.metadata.experiment_name == "exp"
    assert resolved.lora_dir == run / "lora_weights"
    assert resolved.warnings == []


def test_last_link_when_best_missing(tmp_path):
    run = make_run(tmp_path, best=None)
    resolved = resolve_run_dir(run)
    assert (resolved.checkpoint_path, resolved.checkpoint_rule) == (run / CKPT_3, RULE_LAST)


def test_newest_by_mtime_when_no_links(tmp_path):
    run = make_run(tmp_path, best=None, last=None)
    os.utime(run / CKPT_1, (2_000_000, 2_000_000))  # epoch 1 rewritten last: the newest by mtime
    resolved = resolve_run_dir(run)
    assert (resolved.checkpoint_path, resolved.checkpoint_rule) == (run / CKPT_1, RULE_NEWEST)
    assert "newest of 3 *.ckpt" in resolved.checkpoint_reason


def test_ckpt_path_overrides_the_links(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    resolved = resolve_run_dir(run, str(run / CKPT_1))
    assert (resolved.checkpoint_path, resolved.checkpoint_rule) == (run / CKPT_1, RULE_PATH)
    # Relative: the current directory first, then the run directory.
    monkeypatch.chdir(tmp_path)
    assert resolve_run_dir(run, CKPT_3).checkpoint_path == run / CKPT_3
    (tmp_path / CKPT_3).write_bytes(b"cwd copy")
    resolved = resolve_run_dir(run, CKPT_3)
    assert resolved.checkpoint_path == tmp_path / CKPT_3
    assert any("outside the run directory" in w for w in resolved.warnings)


def test_ckpt_path_missing_names_paths_tried(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    expected = f"--ckpt_path 'gone.ckpt' not found (tried '{tmp_path}/gone.ckpt', '{run}/gone.ckpt')"
    with pytest.raises(InputNotFoundError, match=re.escape(expected)):
        resolve_run_dir(run, "gone.ckpt")


@pytest.mark.parametrize(
    ("rule", "expected", "name"), [("best", RULE_BEST, CKPT_2), ("last", RULE_LAST, CKPT_3)]
)
def test_rule_override(tmp_path, rule, expected, name):
    run = make_run(tmp_path)
    os.utime(run / CKPT_1, (3_000_000, 3_000_000))
    resolved = resolve_run_dir(run, rule)
    assert (resolved.checkpoint_path, resolved.checkpoint_rule) == (run / name, expected)
    assert "requested" in resolved.checkpoint_reason


def test_requested_best_missing_is_an_error(tmp_path):
    run = make_run(tmp_path, best=None)
    expected = f"the 'best' checkpoint was requested but there is no best.ckpt in '{run}' (found: "
    with pytest.raises(InputNotFoundError, match=re.escape(expected)):
        resolve_run_dir(run, "best")


def test_dangling_best_is_reported_and_skipped(tmp_path, caplog):
    run = make_run(tmp_path)
    (run / CKPT_2).unlink()
    with caplog.at_level(logging.WARNING, logger="panollava.rundir"):
        resolved = resolve_run_dir(run)
    assert (resolved.checkpoint_path, resolved.checkpoint_rule) == (run / CKPT_3, RULE_LAST)
    message = f"best.ckpt in '{run}' is a dangling link to '{CKPT_2}'"
    assert any(message in w for w in resolved.warnings)
    assert any(message in r.getMessage() for r in caplog.records)
    assert "skipping best.ckpt" in resolved.checkpoint_reason


def test_requested_best_dangling_is_an_error(tmp_path):
    run = make_run(tmp_path)
    (run / CKPT_2).unlink()
    expected = f"'best' checkpoint was requested but best.ckpt in '{run}' is a dangling link to '{CKPT_2}'"
    with pytest.raises(InputNotFoundError, match=re.escape(expected)):
        resolve_run_dir(run, "best")


def test_no_checkpoint_lists_the_directory(tmp_path):
    run = make_run(tmp_path, ckpts=(), best=None, last=None)
    expected = (
        f"no checkpoint in '{run}': no best.ckpt or last.ckpt link and no *.ckpt file "
        f"(found: checkpoint_metadata.json, lora_weights/). Pass the run directory that training wrote."
    )
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        resolve_run_dir(run)


def test_parent_of_run_dir_suggests_run_dirs(tmp_path):
    run = make_run(tmp_path)
    expected = r"no \*\.ckpt file \(found: anyres-e2p_mlp/\).*Run directories below it: anyres-e2p_mlp/"
    with pytest.raises(InputNotFoundError, match=expected):
        resolve_run_dir(run.parent)


def test_missing_run_dir_lists_siblings(tmp_path):
    run = make_run(tmp_path)
    wrong = run.parent / "anyres-e2p_avgpool"
    expected = f"run directory '{wrong}' does not exist. Directories in '{run.parent}': anyres-e2p_mlp/."
    with pytest.raises(InputNotFoundError, match=re.escape(expected)):
        resolve_run_dir(wrong)


def test_run_dir_is_a_checkpoint_file(tmp_path):
    run = make_run(tmp_path)
    expected = f"is a file, not a directory. It is a checkpoint file: pass its folder '{run}'"
    with pytest.raises(InputNotFoundError, match=re.escape(expected)):
        resolve_run_dir(run / CKPT_1)


def test_no_metadata_warns_and_names_config(tmp_path, caplog):
    run = make_run(tmp_path, metadata=False)
    with caplog.at_level(logging.WARNING, logger="panollava.rundir"):
        resolved = resolve_run_dir(run)
    expected = (
        f"no checkpoint_metadata.json in '{run}': settings come from --config and defaults; "
        f"pass --config configs/<your-training-config>.yaml"
    )
    assert resolved.metadata is None
    assert resolved.metadata_path == run / METADATA_FILENAME
    assert expected in resolved.warnings
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_lora_dir_without_adapter_config_warns(tmp_path):
    run = make_run(tmp_path)
    (run / "lora_weights" / "adapter_config.json").unlink()
    resolved = resolve_run_dir(run)
    assert resolved.lora_dir is None
    assert any(f"'{run / 'lora_weights'}' has no adapter_config.json" in w for w in resolved.warnings)


def test_lora_dir_found_without_metadata(tmp_path):
    run = make_run(tmp_path, metadata=False)
    assert resolve_run_dir(run).lora_dir == run / "lora_weights"


def test_best_link_disagreeing_with_metadata_is_reported(tmp_path):
    run = make_run(tmp_path)
    update_link(run / "best.ckpt", run / CKPT_1)
    resolved = resolve_run_dir(run)
    assert resolved.checkpoint_path == run / CKPT_1
    assert any(f"records the best checkpoint as '{CKPT_2}'" in w for w in resolved.warnings)


# --- config-only mode and banner ----------------------------------------------------------------------------


def test_find_run_dir_from_config(tmp_path):
    run = make_run(tmp_path)
    assert find_run_dir_from_config(tmp_path / "runs", "exp", "finetune", "anyres_e2p", "mlp") == run


def test_find_run_dir_from_config_missing_lists_what_exists(tmp_path):
    run = make_run(tmp_path)
    derived = run.parent.parent / "resampler" / "anyres-e2p_mlp"
    expected = (
        f"run directory '{derived}' derived from the config (experiment_name='exp', stage='resampler', "
        f"crop_strategy='anyres_e2p' (→ 'anyres-e2p'), resampler_type='mlp') does not exist; "
        f"run directories under '{run.parent.parent}': finetune/anyres-e2p_mlp/."
    )
    with pytest.raises(InputNotFoundError, match=re.escape(expected)):
        find_run_dir_from_config(tmp_path / "runs", "exp", "resampler", "anyres_e2p", "mlp")


def test_find_run_dir_from_config_needs_the_keys(tmp_path):
    with pytest.raises(InvalidInputError, match=r"the config does not set experiment_name, stage"):
        find_run_dir_from_config(tmp_path, None, None, "anyres_e2p", "mlp")


def test_banner_lines(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines = banner_lines(resolve_run_dir(run))
    text = "\n".join(lines)
    assert lines[1] == "📂 Checkpoint directory: runs/exp/finetune/anyres-e2p_mlp"
    assert f"✅ Metadata loaded: runs/exp/finetune/anyres-e2p_mlp/{METADATA_FILENAME}" in lines
    assert f"✅ Using best checkpoint: runs/exp/finetune/anyres-e2p_mlp/{CKPT_2} ({RULE_BEST})" in lines
    assert f"📋 From metadata: experiment exp · stage finetune · vision {VISION}" in text
    assert "language Qwen/Qwen3-0.6B · resampler mlp · crop anyres_e2p" in text
    assert "✅ Metadata merged into config" in lines
    assert "✅ Found LoRA weights: runs/exp/finetune/anyres-e2p_mlp/lora_weights" in lines
    assert not any(line.startswith("⚠️") for line in lines)


def test_banner_shows_warnings(tmp_path):
    run = make_run(tmp_path, metadata=False, best=None)
    lines = banner_lines(resolve_run_dir(run), merged_ok=False)
    assert any(line.startswith("⚠️ No metadata:") for line in lines)
    assert any(line.startswith("⚠️ no checkpoint_metadata.json in") for line in lines)
    assert not any("From metadata" in line for line in lines)


def test_modules_import_without_heavy_libraries():
    code = (
        "import sys, panollava.rundir, panollava.settings, panollava.metadata; "
        "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
