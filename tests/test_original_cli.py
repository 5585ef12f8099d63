"""``panollava-cli test --ckpt_dir`` on a run directory written by the original PanoLLaVA trainer (issue 19), as a
user runs it: from the fixture's root (the original resolved its paths against its working directory), on 1 and 2
processes, with and without the run's metadata and training YAML. The captions must equal what the original model
computes (``../shared/fixtures/panollava-v1/expected``); tests/test_original_family.py checks the views, the vision
tokens and the first-step logits against the same fixture.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from multi_eval import torchrun
from panollava.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = PROJECT_ROOT.parent / "shared" / "fixtures" / "panollava-v1"
RUN = "runs/only_finetune/finetune/anyres-e2p_mlp"
DECODING = ["--min_new_tokens", "5", "--repetition_penalty", "1.1", "--max_new_tokens", "12"]

pytestmark = pytest.mark.skipif(not (FIXTURE / RUN).is_dir(), reason=f"fixture not found at {FIXTURE}")


def _expected(kind: str = "") -> list[str]:
    """The original model's captions (``kind`` ``evalpy_literal``: the model the original eval.py built)."""
    base = FIXTURE / "expected" / kind if kind else FIXTURE / "expected"
    return [json.loads((base / f"sample_{k}" / "generation.json").read_text())["prediction"] for k in range(4)]


def _predictions(out: Path) -> list[str]:
    return [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A writable copy of the fixture's root; tests run from it, as a user of the original tool would."""
    dst = tmp_path_factory.mktemp("v1") / "panollava-v1"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("expected"))
    for path in [dst, *dst.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    bare = dst / "runs" / "bare" / "finetune" / "anyres-e2p_mlp"  # as real original runs: no metadata, no YAML
    shutil.copytree(dst / RUN, bare)
    (bare / "checkpoint_metadata.json").unlink()
    (bare / "config.yaml").unlink()
    return dst


@pytest.fixture
def in_root(root, monkeypatch) -> Path:
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_test_ckpt_dir_of_an_original_run_equals_the_original_model(in_root, batch_size, capsys):
    out = in_root / f"out_b{batch_size}"
    status = main(["test", "--ckpt_dir", RUN, *DECODING, "--csv_input", "data/test.csv", "--batch_size", batch_size,
                   "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    assert "Recognised: family panollava-v1" in printed
    assert "no best.ckpt link; siglip_mlp_anyres-e2p_train_epoch00_loss8.9649.ckpt has the lowest loss" in printed
    assert _predictions(out) == _expected()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "panollava-v1" and metrics["model"]["family"] == "panollava-v1"
    assert metrics["decoding"]["path"] == "shared_prefix"
    assert metrics["decoding"]["min_new_tokens"] == 5 and metrics["decoding"]["repetition_penalty"] == 1.1
    assert metrics["checkpoint"]["rule"] and metrics["model_fingerprint"]["checkpoint_sha256"]
    report = (out / "report.html").read_text()
    assert "anyres_e2p, 32x32 px" in report and "not shown" not in report  # the run's own view geometry


def test_a_bare_original_run_assumes_code_defaults_and_says_which(in_root, caplog):
    out = in_root / "out_bare_defaults"
    with caplog.at_level(logging.WARNING):
        assert main(["test", "--ckpt_dir", "runs/bare/finetune/anyres-e2p_mlp", *DECODING, "--csv_input",
                     "data/test.csv", "--output_dir", str(out)]) == 0
    warning = next(r.getMessage() for r in caplog.records if "original code's defaults" in r.getMessage())
    for assumed in ("use_projection_pe=False", "stitching_mode='drop_overlap'", "pe_enable_continuity=True",
                    "max_text_length=512"):
        assert assumed in warning, warning
    # Without the YAML the positional encodings are off (the code default), as the original eval.py built this
    # run: the captions are eval.py's, not the trained model's.
    assert _predictions(out) == _expected("evalpy_literal") != _expected()


def test_an_original_yaml_as_config_maps_and_a_wrong_one_is_refused(in_root, capsys):
    out = in_root / "out_bare_yaml"
    assert main(["test", "--ckpt_dir", "runs/bare/finetune/anyres-e2p_mlp", "--config", "configs/default.yaml",
                 *DECODING, "--csv_input", "data/test.csv", "--output_dir", str(out)]) == 0
    assert "Original training YAML" in capsys.readouterr().out
    assert _predictions(out) == _expected()
    # the original YAML beside one of our own run directories is a mistake, said as such
    ours = in_root / "not_an_original_run"
    ours.mkdir()
    status = main(["test", "--ckpt_dir", str(ours), "--config", "configs/default.yaml", "--csv_input",
                   "data/test.csv"])
    assert status == 2
    assert "training YAML of the original PanoLLaVA trainer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_equal_the_original_model(root, tmp_path):
    """One torchrun launch, 2 ranks: the run with its metadata (batch 1) and the bare run with the training YAML
    (batch 3) — whole panoramas per rank, prefix shared."""
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    runs = [
        ["test", "--ckpt_dir", RUN, *DECODING, "--csv_input", "data/test.csv", "--batch_size", "1",
         "--output_dir", str(tmp_path / "d1"), *ddp],
        ["test", "--ckpt_dir", "runs/bare/finetune/anyres-e2p_mlp", "--config", "configs/default.yaml", *DECODING,
         "--csv_input", "data/test.csv", "--batch_size", "3", "--output_dir", str(tmp_path / "d2"), *ddp],
    ]
    proc = torchrun(runs, cwd=root)
    assert proc.returncode == 0, proc.stdout[-4000:]
    for name in ("d1", "d2"):
        assert _predictions(tmp_path / name) == _expected(), name
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["evaluation"]["world_size"] == 2 and metrics["decoding"]["path"] == "shared_prefix"


def test_a_resume_refuses_another_yaml_for_the_same_checkpoint(in_root, capsys):
    """The family's resolved settings are in the resume fingerprint: the same checkpoint with positional encodings
    on (the YAML) is another model than without (code defaults), and a rerun into the folder says so."""
    out = in_root / "out_resume_yaml"
    common = ["test", "--ckpt_dir", "runs/bare/finetune/anyres-e2p_mlp", *DECODING, "--csv_input", "data/test.csv",
              "--output_dir", str(out)]
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--config", "configs/default.yaml"]) == 2
    err = capsys.readouterr().err
    assert "settings.use_projection_pe: False -> True" in err and str(out) in err
    assert main(common) == 0  # the same command again: nothing to redo
    assert _predictions(out) == _expected("evalpy_literal")
