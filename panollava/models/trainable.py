"""Which parts of the panoramic VLM train in a stage, and setting ``requires_grad`` accordingly (pure torch)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

TRAINABLE_PARTS = ("vision_tower", "resampler", "projector", "lora", "language_model")
"""The parts a run can train (``--model.trainable``); ``language_model`` is every LM weight (a tiny LM from scratch)."""

STAGE_TRAINABLE = {
    "vision": ("vision_tower", "resampler", "projector"),
    "resampler": ("resampler", "projector"),
    "finetune": ("lora", "projector"),
}
"""What each training stage trains by default."""

_PREFIXES = {"vision_tower": "vision_tower.", "resampler": "resampler.", "projector": "projector.",
             "language_model": "language_model."}


def set_trainable(vlm: nn.Module, parts: Iterable[str]) -> None:
    """``requires_grad`` on exactly the weights of ``parts`` (LoRA tensors count as ``lora``, never as the LM's).

    Args:
        vlm: The :class:`~panollava.models.vlm.PanoramicVLM`.
        parts: Names from :data:`TRAINABLE_PARTS`.
    """
    parts = set(parts)
    for name, param in vlm.named_parameters():
        if "lora_" in name:
            param.requires_grad = "lora" in parts
        else:
            part = next((p for p, prefix in _PREFIXES.items() if name.startswith(prefix)), None)
            param.requires_grad = part in parts
