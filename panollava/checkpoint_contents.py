"""What a panollava checkpoint holds, and the strict restore of the weights it does not hold. Pure functions over
state dicts (no Lightning), used by :class:`panollava.module.PanoLLaVAModule`'s checkpoint hooks.

A checkpoint holds the weights that training can change: resampler and projector always, the vision tower when it
is trained, the LoRA tensors when LoRA is on. Under ``checkpoint["panollava"]`` (:data:`CHECKPOINT_KEY`) it says
which module prefixes are *not* in it because they are reloaded from the named pretrained models, with a cheap
fingerprint of those weights and of the tokenizer's vocabulary. Loading is strict: a key missing from a checkpoint
must belong to a prefix listed there, whose source model name matches the current model settings; anything else
is an error that names the keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from panollava.errors import InvalidInputError

CHECKPOINT_KEY = "panollava"
"""The entry of a checkpoint dict that describes its contents."""

PRETRAINED_PARTS = (("language_model", "language_model_name"), ("vision_tower", "vision_name"))
"""(module prefix under ``vlm.``, the model-settings key naming its pretrained source)."""


def saved_in_checkpoint(key: str, trainable_parts: Iterable[str], parts_in_checkpoint: Iterable[str] = ()) -> bool:
    """Whether a state-dict key is stored in checkpoints (else it is reloaded from a named model).

    Args:
        key: A key of the LightningModule's state dict (``vlm.…``).
        trainable_parts: Parts whose weights train in this run.
        parts_in_checkpoint: Pretrained parts a restored checkpoint held in full (a run that trained them).
    """
    name = key[len("vlm.") :] if key.startswith("vlm.") else key
    if "lora_" in name or name.startswith(("resampler.", "projector.")):
        return True
    for part, _ in PRETRAINED_PARTS:
        if name.startswith(part + "."):
            return part in trainable_parts or part in parts_in_checkpoint
    return False


def pretrained_sources(
    model_config: Mapping[str, Any], trainable_parts: Iterable[str], parts_in_checkpoint: Iterable[str] = ()
) -> dict[str, str]:
    """Module prefix → model name, for the base weights that checkpoints do not hold."""
    trainable, held = set(trainable_parts), set(parts_in_checkpoint)
    return {
        f"vlm.{part}.": model_config[key]
        for part, key in PRETRAINED_PARTS
        if part not in trainable and part not in held
    }


def base_fingerprints(
    state: Mapping[str, torch.Tensor], sources: Mapping[str, str], is_saved
) -> dict[str, str]:
    """A cheap fingerprint of the weights reloaded from each named model (not the full data: shapes and a sum of
    the first values of every tensor), to detect a base model that changed since training.

    Args:
        state: The module's state dict.
        sources: Prefix → model name (:func:`pretrained_sources`).
        is_saved: ``key -> bool``: whether a key is stored in checkpoints (those are not fingerprinted).
    """
    digests = {prefix: hashlib.sha256() for prefix in sources}
    for name, tensor in state.items():
        for prefix, digest in digests.items():
            if name.startswith(prefix) and not is_saved(name):
                head = tensor.detach().reshape(-1)[:4096].double()
                digest.update(f"{name}{tuple(tensor.shape)}{head.sum().item():.6e}".encode())
    return {prefix: d.hexdigest()[:16] for prefix, d in digests.items()}


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (16 hex digits) of the tokenizer's vocabulary: token ids must mean what they meant in training."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def restore_missing(
    state: dict[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    info: Mapping[str, Any] | None,
    *,
    model_config: Mapping[str, Any],
    tokenizer_print: str,
    lora_supplied: bool,
    fingerprints_now,
) -> frozenset[str]:
    """Checks a checkpoint's state dict against the model and fills in the base weights it does not hold.

    Args:
        state: The checkpoint's state dict (completed in place).
        own: The freshly built module's state dict.
        info: The checkpoint's :data:`CHECKPOINT_KEY` entry (None: not written by panollava).
        model_config: The current model settings (names of the pretrained models).
        tokenizer_print: :func:`tokenizer_fingerprint` of the current tokenizer.
        lora_supplied: An adapter folder supplies the LoRA tensors (they may be missing from the checkpoint).
        fingerprints_now: ``(sources, parts held) -> {prefix: fingerprint}`` of the current base weights.

    Returns:
        The pretrained parts the checkpoint held in full.

    Raises:
        InvalidInputError: The checkpoint does not fit the model (names the keys and what to change).
    """
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise InvalidInputError(
            f"checkpoint holds {len(unexpected)} weight(s) this model does not have, e.g. {unexpected[:5]}; "
            "the model settings (metadata model_config / LoRA) do not match the run that wrote it"
        )
    expected_tokenizer = (info or {}).get("tokenizer_fingerprint")
    if expected_tokenizer is not None and expected_tokenizer != tokenizer_print:
        raise InvalidInputError(
            f"the tokenizer loaded from {model_config.get('tokenizer_name') or model_config['language_model_name']!r} "
            f"has another vocabulary than the one the checkpoint was trained with (fingerprint {tokenizer_print} "
            f"!= {expected_tokenizer}); load the same tokenizer"
        )
    missing = sorted(set(own) - set(state))
    if not missing:
        return frozenset()
    if info is None:
        raise InvalidInputError(
            f"checkpoint lacks {len(missing)} weight(s), e.g. {missing[:5]}, and does not say where they come "
            "from (no 'panollava' entry): it was not written by panollava"
        )
    sources: dict[str, str] = info["from_pretrained"]
    # LoRA tensors sit under the LM's prefix but never come from the pretrained LM: a fresh adapter (B = 0) would
    # silently evaluate the base model. They may be missing only when an adapter folder (lora_dir) supplies them.
    unexplained = [
        k for k in missing if ("lora_" in k and not lora_supplied) or not any(k.startswith(p) for p in sources)
    ]
    if unexplained:
        raise InvalidInputError(
            f"checkpoint lacks {len(unexplained)} weight(s) that are not reloaded from a pretrained model, "
            f"e.g. {unexplained[:5]}"
        )
    current = {f"vlm.{part}.": model_config[key] for part, key in PRETRAINED_PARTS}
    for prefix, name in sources.items():
        if any(k.startswith(prefix) for k in missing) and current.get(prefix) != name:
            raise InvalidInputError(
                f"checkpoint expects the '{prefix[4:-1]}' weights from {name!r} but the model was built from "
                f"{current.get(prefix)!r}; use the model names the run was trained with"
            )
    held = frozenset(part for part, _ in PRETRAINED_PARTS if f"vlm.{part}." not in sources)
    recorded = info.get("base_fingerprints") or {}
    for prefix, fingerprint in fingerprints_now({p: n for p, n in sources.items() if p in recorded}, held).items():
        if fingerprint != recorded[prefix]:
            raise InvalidInputError(
                f"the '{prefix[4:-1]}' weights loaded from {sources[prefix]!r} differ from those the checkpoint "
                f"was trained with (fingerprint {fingerprint} != {recorded[prefix]}); load the same base model"
            )
    for key in missing:
        state[key] = own[key]
    return held


def describe_checkpoint(
    checkpoint: dict[str, Any],
    state_now: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    trainable_parts: Iterable[str],
    parts_in_checkpoint: Iterable[str],
    tokenizer,
) -> None:
    """Drops from a checkpoint's state dict the weights reloaded from the named pretrained models, and records
    where they come from under :data:`CHECKPOINT_KEY` (with fingerprints of those weights and of the vocabulary).

    Args:
        checkpoint: The checkpoint dict Lightning is saving (changed in place).
        state_now: The module's full state dict.
        model_config: The model settings (names of the pretrained models).
        trainable_parts: Parts whose weights train in this run.
        parts_in_checkpoint: Pretrained parts a restored checkpoint held in full.
        tokenizer: The tokenizer (its vocabulary is fingerprinted).
    """
    trainable, held = tuple(trainable_parts), frozenset(parts_in_checkpoint)

    def is_saved(key: str) -> bool:
        return saved_in_checkpoint(key, trainable, held)

    state = checkpoint["state_dict"]
    for key in [k for k in state if not is_saved(k)]:
        del state[key]
    sources = pretrained_sources(model_config, trainable, held)
    checkpoint[CHECKPOINT_KEY] = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "from_pretrained": sources,
        "base_fingerprints": base_fingerprints(state_now, sources, is_saved),
        "saved_keys": len(state),
        "trainable_parts": list(trainable),
    }


def restore_checkpoint(
    checkpoint: dict[str, Any],
    own: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    trainable_parts: Iterable[str],
    tokenizer,
    lora_supplied: bool,
) -> frozenset[str] | None:
    """The strict restore of :func:`restore_missing` for a module's state dict ``own``.

    Returns:
        The pretrained parts the checkpoint held in full, or None when it held every weight the module has.
    """
    trainable = tuple(trainable_parts)
    fills_base_weights = bool(set(own) - set(checkpoint["state_dict"]))
    held = restore_missing(
        checkpoint["state_dict"], own, checkpoint.get(CHECKPOINT_KEY),
        model_config=model_config,
        tokenizer_print=tokenizer_fingerprint(tokenizer),
        lora_supplied=lora_supplied,
        fingerprints_now=lambda sources, parts: base_fingerprints(
            own, sources, lambda key: saved_in_checkpoint(key, trainable, parts)),
    )
    return held if fills_base_weights else None
