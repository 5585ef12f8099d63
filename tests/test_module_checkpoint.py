"""``PanoLLaVAModule`` checkpoints: only trainable weights are stored, loading is strict and explained, and each stage
trains what it documents."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from panollava.errors import InvalidInputError
from panollava.offline.tiny_models import build_tiny_models
from panollava.module import CHECKPOINT_KEY, PanoLLaVAModule

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}



@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models, with the LM copied into a folder of this module (so tests may rewrite its weights)."""
    tiny = build_tiny_models()
    root = tmp_path_factory.mktemp("models")
    for name in ("lm", "lm-fingerprint"):
        shutil.copytree(tiny["tiny-qwen3"], root / name)
    return {"vision": tiny["tiny-siglip"], "lm": root / "lm", "lm-fingerprint": root / "lm-fingerprint"}


def _model_config(dirs: dict[str, Path], lm: str = "lm") -> dict:
    return {
        "vision_name": str(dirs["vision"]),
        "language_model_name": str(dirs[lm]),
        "resampler_type": "mlp",
        "latent_dimension": 48,
    }


def _module(dirs: dict[str, Path], stage: str = "finetune", lm: str = "lm", **kwargs) -> PanoLLaVAModule:
    lora = kwargs.pop("lora", LORA if stage == "finetune" else None)
    module = PanoLLaVAModule(model_config=_model_config(dirs, lm), stage=stage, lora=lora, **kwargs)
    module.configure_model()
    return module


def _randomise_lora(module: PanoLLaVAModule, seed: int) -> None:
    """Non-zero LoRA B (the default init is 0, which would make 'the adapter survived' vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.vlm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _checkpoint(module: PanoLLaVAModule) -> dict:
    """What ``trainer.save_checkpoint`` writes, minus the trainer state."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def _save(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


BATCH = {
    "pixel_values": torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
    "query": ["room", "what they are doing"],
    "references": [["a red sofa near the window"], ["people sitting at a table"]],
    "sample_id": ["s0", "s1"],
}


def _logits(module: PanoLLaVAModule, batch: dict = BATCH) -> torch.Tensor:
    module.vlm.eval()
    enc = module.prompts.encode(
        batch["query"], module._num_image_tokens(batch["pixel_values"]), [r[0] for r in batch["references"]]
    )
    with torch.no_grad():
        return module.vlm(pixel_values=batch["pixel_values"], **enc).logits


def _lora(module: PanoLLaVAModule) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if "lora_" in k}


@pytest.fixture(scope="module")
def finetuned(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A finetune module with non-trivial LoRA weights and its checkpoint file."""
    torch.manual_seed(0)
    module = _module(model_dirs)
    _randomise_lora(module, seed=1)
    checkpoint = _checkpoint(module)
    path = _save(checkpoint, tmp_path_factory.mktemp("ckpt") / "finetune.ckpt")
    return module, checkpoint, path


def _edited(finetuned, tmp_path: Path, edit) -> Path:
    _, checkpoint, _ = finetuned
    copy = {**checkpoint, "state_dict": dict(checkpoint["state_dict"])}
    copy[CHECKPOINT_KEY] = dict(checkpoint[CHECKPOINT_KEY])
    edit(copy)
    return _save(copy, tmp_path / "edited.ckpt")


# -- what a checkpoint holds ----------------------------------------------------------------------------------------
def test_finetune_checkpoint_holds_only_resampler_projector_and_lora(finetuned) -> None:
    module, checkpoint, _ = finetuned
    keys = set(checkpoint["state_dict"])
    expected = {
        k for k in module.state_dict() if k.startswith(("vlm.resampler.", "vlm.projector.")) or "lora_" in k
    }
    assert keys == expected
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert not [k for k in keys if k.startswith("vlm.vision_tower.")]
    assert not [k for k in keys if k.startswith("vlm.language_model.") and "lora_" not in k]
    info = checkpoint[CHECKPOINT_KEY]
    assert info["from_pretrained"] == {
        "vlm.language_model.": module.hparams.model_config["language_model_name"],
        "vlm.vision_tower.": module.hparams.model_config["vision_name"],
    }
    assert set(info["base_fingerprints"]) == set(info["from_pretrained"])
    assert info["saved_keys"] == len(keys)
    assert info["trainable_parts"] == ["lora", "projector"]


def test_finetune_checkpoint_reloads_with_identical_logits(finetuned) -> None:
    module, _, path = finetuned
    loaded = PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.stage == "finetune" and loaded.hparams.lora["r"] == 4
    expected, got = _lora(module), _lora(loaded)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    for key, value in module.state_dict().items():  # everything else too, whether stored or reloaded
        assert torch.equal(loaded.state_dict()[key], value), key
    reference = _logits(module)
    assert (reference - _logits(loaded)).abs().max().item() <= 1e-6
    # The adapter matters: without it the logits differ (so the comparison above is not vacuous).
    with module.vlm.language_model.disable_adapter():
        assert (reference - _logits(module)).abs().max().item() > 1e-3


# -- strict, explained loading --------------------------------------------------------------------------------------
def test_unexplained_missing_key_is_named(finetuned, tmp_path: Path) -> None:
    key = "vlm.projector.weight"
    path = _edited(finetuned, tmp_path, lambda c: c["state_dict"].pop(key))
    with pytest.raises(InvalidInputError, match=rf"lacks 1 weight\(s\).*'{key}'"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)


def test_missing_lora_weights_are_not_replaced_by_a_fresh_adapter(finetuned, tmp_path: Path) -> None:
    def drop_lora(c):
        for key in [k for k in c["state_dict"] if "lora_" in k]:
            del c["state_dict"][key]

    path = _edited(finetuned, tmp_path, drop_lora)
    with pytest.raises(InvalidInputError, match=r"lacks 28 weight\(s\).*lora_"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)
    # With an adapter folder (a run's lora_weights/) the LoRA tensors come from there.
    module = finetuned[0]
    module.vlm.language_model.save_pretrained(tmp_path / "lora_weights")
    loaded = PanoLLaVAModule.load_from_checkpoint(path, weights_only=True, lora_dir=str(tmp_path / "lora_weights"))
    for key, value in _lora(module).items():
        assert torch.equal(_lora(loaded)[key], value), key
    assert (_logits(module) - _logits(loaded)).abs().max().item() <= 1e-6


def test_unexpected_key_is_refused(finetuned, tmp_path: Path) -> None:
    path = _edited(finetuned, tmp_path, lambda c: c["state_dict"].__setitem__("vlm.extra_head.weight", torch.zeros(2)))
    with pytest.raises(InvalidInputError, match=r"1 weight\(s\) this model does not have.*'vlm.extra_head.weight'"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)


def test_lora_settings_that_differ_are_refused(finetuned) -> None:
    _, _, path = finetuned
    with pytest.raises(InvalidInputError, match=r"holds 24 weight\(s\) this model does not have.*down_proj.lora_A"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True, lora={**LORA, "target_modules": ["q_proj"]})


def test_checkpoint_not_written_by_panollava(finetuned, tmp_path: Path) -> None:
    path = _edited(finetuned, tmp_path, lambda c: c.pop(CHECKPOINT_KEY))
    with pytest.raises(InvalidInputError, match="no 'panollava' entry"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)


def test_other_base_model_name_is_refused(finetuned, model_dirs: dict[str, Path]) -> None:
    _, _, path = finetuned
    other = _model_config(model_dirs, lm="lm-fingerprint")
    with pytest.raises(InvalidInputError, match=r"expects the 'language_model' weights from .*'/.*/lm'"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True, model_config=other)


def test_changed_base_weights_are_detected(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = model_dirs["lm-fingerprint"]
    module = _module(model_dirs, lm="lm-fingerprint")
    path = _save(_checkpoint(module), tmp_path / "fp.ckpt")
    # Same folder name, different weights: rebuild the LM with another seed.
    torch.manual_seed(123)
    lm = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(folder).config)
    lm.save_pretrained(folder)
    with pytest.raises(InvalidInputError, match=r"'language_model' weights loaded from .* differ .*fingerprint"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)


# -- stages ---------------------------------------------------------------------------------------------------------
def _trainable_groups(module: PanoLLaVAModule) -> dict[str, set[bool]]:
    groups: dict[str, set[bool]] = {}
    for name, p in module.vlm.named_parameters():
        group = "lora" if "lora_" in name else name.split(".")[0]
        groups.setdefault(group, set()).add(p.requires_grad)
    return groups


def test_trainable_parts_per_stage(model_dirs: dict[str, Path], finetuned) -> None:
    expected = {
        "vision": {"vision_tower": {True}, "resampler": {True}, "projector": {True}, "language_model": {False}},
        "resampler": {"vision_tower": {False}, "resampler": {True}, "projector": {True}, "language_model": {False}},
        "finetune": {
            "vision_tower": {False}, "resampler": {False}, "projector": {True}, "language_model": {False},
            "lora": {True},
        },
    }
    for stage, groups in expected.items():
        module = finetuned[0] if stage == "finetune" else _module(model_dirs, stage)
        assert _trainable_groups(module) == groups, stage
    module = _module(model_dirs, "resampler", trainable=["language_model", "projector"])
    assert _trainable_groups(module)["language_model"] == {True}
    with pytest.raises(InvalidInputError, match="unknown trainable part"):
        PanoLLaVAModule(model_config=_model_config(model_dirs), trainable=["lm_head"])
    with pytest.raises(InvalidInputError, match="'lora' is trainable but no LoRA"):
        _module(model_dirs, "resampler", trainable=["lora"])


def test_vision_stage_checkpoint_holds_the_vision_tower(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _module(model_dirs, "vision")
    with torch.no_grad():  # as if trained: differs from the pretrained tower
        for p in module.vlm.vision_tower.parameters():
            p.add_(0.01)
    checkpoint = _checkpoint(module)
    keys = set(checkpoint["state_dict"])
    assert {k.split(".")[1] for k in keys} == {"vision_tower", "resampler", "projector"}
    assert checkpoint[CHECKPOINT_KEY]["from_pretrained"] == {"vlm.language_model.": str(model_dirs["lm"])}
    loaded = PanoLLaVAModule.load_from_checkpoint(_save(checkpoint, tmp_path / "v.ckpt"), weights_only=True)
    assert (_logits(module) - _logits(loaded)).abs().max().item() <= 1e-6


class _Panoramas(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {
            "pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)),
            "query": ["room", "sky", "people", "furniture"][i],
            "references": [["a red sofa", "a blue sky", "two people", "a table"][i]],
            "sample_id": f"s{i}",
        }


def _collate(items: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "query": [it["query"] for it in items],
        "references": [it["references"] for it in items],
        "sample_id": [it["sample_id"] for it in items],
    }


def test_finetune_fit_trains_lora_only_and_round_trips(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = PanoLLaVAModule(model_config=_model_config(model_dirs), stage="finetune", lora=LORA, learning_rate=1e-2)
    module.configure_model()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert all(not v.any() for k, v in before.items() if "lora_B" in k)  # peft's init
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(_Panoramas(), batch_size=2, collate_fn=_collate)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 3
    after = module.state_dict()
    lora_b = [k for k in after if "lora_B" in k]
    assert lora_b and all(after[k].abs().sum() > 0 for k in lora_b)
    for key, value in before.items():
        changed = not torch.equal(after[key], value)
        if "lora_" in key or key.startswith("vlm.projector."):
            assert changed, key
        else:  # vision tower, resampler (not trained in finetune) and the base LM are untouched
            assert not changed, key

    path = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert all(k.startswith(("vlm.resampler.", "vlm.projector.")) or "lora_" in k for k in saved["state_dict"])
    loaded = PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)
    assert (_logits(module) - _logits(loaded)).abs().max().item() <= 1e-6
    for key, value in _lora(module).items():
        assert torch.equal(_lora(loaded)[key], value), key


def test_another_tokenizer_vocabulary_is_refused(finetuned, tmp_path: Path) -> None:
    path = _edited(finetuned, tmp_path, lambda c: c[CHECKPOINT_KEY].update(tokenizer_fingerprint="0" * 16))
    with pytest.raises(InvalidInputError, match="another vocabulary"):
        PanoLLaVAModule.load_from_checkpoint(path, weights_only=True)
