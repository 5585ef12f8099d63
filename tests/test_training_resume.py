"""Resumed training keeps the whole history (issue 12): a run stopped between epochs and continued with
``fit --ckpt_path <run>/last.ckpt`` has one checkpoint list, ``best.ckpt``, ``last.ckpt``, ``lora_weights/`` and
``checkpoint_metadata.json`` covering both segments; a NaN or missing ``val/loss`` is recorded as null with a
note and never chosen as best.

One tiny training, stopped by a crash after epoch 1's checkpoint, then resumed for two more epochs whose recorded
validation losses are made worse (epoch 2: NaN, epoch 3: +100): "best" must then come from the first segment,
which a writer that only remembers the resumed segment gets wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from panollava.callbacks.run_writer import RunDirectoryWriter
from panollava.lightning_cli import run_lightning_cli

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(PROJECT_ROOT / "configs" / "tiny.yaml")


class SimulatedKill(RuntimeError):
    """Stands for a process killed between epochs (raised right after epoch 1's checkpoint was written)."""


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume")
    original = RunDirectoryWriter.on_validation_end
    seen: dict[int, float] = {}

    def crash_after_epoch_1(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if not trainer.sanity_checking:
            seen[trainer.current_epoch] = float(trainer.callback_metrics["val/loss"])
            if trainer.current_epoch == 1:
                raise SimulatedKill("killed between epochs 1 and 2")

    original_loss = RunDirectoryWriter._validation_loss

    def worse_losses(trainer):
        loss = original_loss(trainer)
        seen[trainer.current_epoch] = loss
        return float("nan") if trainer.current_epoch == 2 else loss + 100.0

    old = os.getcwd()
    os.chdir(workdir)
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(RunDirectoryWriter, "on_validation_end", crash_after_epoch_1)
        with pytest.raises(SimulatedKill):
            run_lightning_cli(["fit", "--config", CONFIG, "--trainer.max_epochs", "4"])
        run_dir = workdir / "runs" / "tiny" / "finetune" / "anyres-e2p_mlp"
        first = json.loads((run_dir / "checkpoint_metadata.json").read_text())
        mp.setattr(RunDirectoryWriter, "on_validation_end", original)
        mp.setattr(RunDirectoryWriter, "_validation_loss", staticmethod(worse_losses))
        run_lightning_cli(
            ["fit", "--config", CONFIG, "--trainer.max_epochs", "4", "--ckpt_path", str(run_dir / "last.ckpt")]
        )
    finally:
        mp.undo()
        os.chdir(old)
    return {"run_dir": run_dir, "first": first, "seen": seen}


def test_best_after_resuming_is_the_lowest_loss_over_all_epochs(resumed_run):
    run_dir: Path = resumed_run["run_dir"]
    meta = json.loads((run_dir / "checkpoint_metadata.json").read_text())  # strict JSON below: no NaN
    entries = meta["checkpoints"]["all"]
    assert [e["epoch"] for e in entries] == [0, 1, 2, 3]
    for entry in entries:
        assert (run_dir / entry["file"]).is_file()
    first_segment = {e["epoch"]: e["val_loss"] for e in resumed_run["first"]["checkpoints"]["all"]}
    assert {e["epoch"]: e["val_loss"] for e in entries[:2]} == first_segment
    assert entries[2]["val_loss"] is None and "nan" in entries[2]["val_loss_note"]
    assert entries[3]["val_loss"] == pytest.approx(resumed_run["seen"][3] + 100.0, abs=1e-4)
    best = min(entries[:2], key=lambda e: e["val_loss"])
    assert os.readlink(run_dir / "best.ckpt") == best["file"]
    assert meta["checkpoints"]["best"]["file"] == best["file"]
    assert os.readlink(run_dir / "last.ckpt") == entries[3]["file"]
    assert meta["checkpoints"]["last"]["file"] == entries[3]["file"]
    assert (run_dir / "lora_weights" / "checkpoint.txt").read_text().strip() == best["file"]
    assert meta["created_at"] == resumed_run["first"]["created_at"]
    json.loads(json.dumps(meta, allow_nan=False))


def test_resumed_lora_weights_are_the_best_checkpoints(resumed_run):
    from safetensors.torch import load_file

    run_dir: Path = resumed_run["run_dir"]
    adapter = load_file(str(run_dir / "lora_weights" / "adapter_model.safetensors"))
    state = torch.load(run_dir / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    lora = {k: v for k, v in state.items() if "lora_A" in k or "lora_B" in k}
    assert lora and len(adapter) == len(lora)
    for key, value in adapter.items():
        match = [v for k, v in lora.items() if k.endswith(key.replace(".weight", ".default.weight").split("base_model.model.", 1)[-1])]
        assert len(match) == 1, key
        assert torch.equal(match[0], value), key


def test_existing_run_without_resume_or_exist_ok_is_refused(resumed_run, capsys):
    from panollava.cli import main

    run_dir: Path = resumed_run["run_dir"]
    old = os.getcwd()
    os.chdir(run_dir.parents[3])
    try:
        status = main(["fit", "--config", CONFIG, "--trainer.max_epochs", "1"])
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert status == 2 and "already holds checkpoints" in err and "--ckpt_path" in err and "--exist_ok true" in err
    assert "Traceback" not in err
