"""Build a :class:`~panollava.models.vlm.PanoramicVLM` from names (hub ids or local folders) and LoRA settings."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

from panollava.errors import InvalidInputError, ModelUnavailableError
from panollava.schema import LoraSettings, ModelSettings, to_plain, typed

logger = logging.getLogger(__name__)


@dataclass
class ImagePreprocessing:
    """How views are turned into vision-tower input.

    Attributes:
        image_size: (H, W) of every view.
        mean: Per-channel mean of the vision processor.
        std: Per-channel std of the vision processor.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _source(name: str, what: str, flag: str) -> str:
    """Return a loadable name: an absolute local folder, or a hub id available (cached or online).

    ``tiny:siglip``, ``tiny:siglip2`` and ``tiny:qwen3`` name the tiny offline models (built on first use).
    """
    if name.startswith("tiny:"):
        from panollava.offline.tiny_models import TINY_NAMES, build_tiny_models

        key = f"tiny-{name[5:]}"
        if key not in TINY_NAMES:
            raise ModelUnavailableError(
                f"{what} {name!r}: unknown tiny model; choose one of {[n.replace('tiny-', 'tiny:') for n in TINY_NAMES]}"
            )
        return str(build_tiny_models()[key])
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelUnavailableError(
            f"{what} {name!r} is not a folder ('{path.resolve()}' does not exist); pass an existing model folder "
            f"or a Hugging Face hub id ({flag})"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelUnavailableError(
                f"{what} {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it on a "
                f"machine with network access (`hf download {name}`) and copy the cache (HF_HOME), or pass a local "
                f"folder ({flag} /path/to/model)"
            )
    return name


def _wrap_load_error(exc: Exception, what: str, name: str, flag: str) -> ModelUnavailableError:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return ModelUnavailableError(
        f"could not load {what} {name!r}: it is not a local folder, not in the Hugging Face cache, and the hub "
        f"could not provide it ({type(exc).__name__}: {first_line}). Pass a local folder ({flag} /path/to/model) "
        f"or download it on a machine with network access (`hf download {name}`) and copy the cache (HF_HOME)"
    )


def _vision_config(name: str):
    """(loadable source, vision config) of a SigLIP-family checkpoint; full models yield their ``vision_config``."""
    from transformers import AutoConfig

    flag = "--model.model_config.vision_name"
    src = _source(name, "vision model", flag)
    try:
        config = AutoConfig.from_pretrained(src)
    except OSError as exc:
        raise _wrap_load_error(exc, "vision model", name, flag) from exc
    return src, getattr(config, "vision_config", config)


def load_vision_tower(name: str):
    """Load the vision part of a SigLIP / SigLIP2 checkpoint.

    Full ``SiglipModel`` checkpoints (as on the hub) and bare vision checkpoints both work: the vision config is
    taken from ``vision_config`` when present. The pooling head is dropped (patch tokens are used).

    Args:
        name: Hub id or local folder.

    Returns:
        (model, kind, patch_size) where kind is ``"siglip"`` (images) or ``"siglip2"`` (NaFlex patches).

    Raises:
        ModelUnavailableError: the model cannot be found offline or online.
        InvalidInputError: the checkpoint is not a SigLIP-family vision model.
    """
    from transformers import Siglip2VisionModel, SiglipVisionModel

    flag = "--model.model_config.vision_name"
    src, vision_config = _vision_config(name)
    kinds = {"siglip_vision_model": ("siglip", SiglipVisionModel), "siglip2_vision_model": ("siglip2", Siglip2VisionModel)}
    if vision_config.model_type not in kinds:
        raise InvalidInputError(
            f"vision model {name!r} has model_type {vision_config.model_type!r}; panollava supports SigLIP "
            f"({sorted(kinds)}) vision towers"
        )
    kind, cls = kinds[vision_config.model_type]
    vision_config.vision_use_head = False
    try:
        model = cls.from_pretrained(src, config=vision_config)
    except OSError as exc:
        raise _wrap_load_error(exc, "vision model", name, flag) from exc
    return model, kind, int(vision_config.patch_size)


def load_image_preprocessing(name: str, image_size: tuple[int, int] | None, use_vision_processor: bool) -> ImagePreprocessing:
    """Read mean/std (and the native size) from the vision model's image processor.

    Args:
        name: Vision model hub id or folder.
        image_size: (H, W) override; ``None`` takes the processor's / config's size.
        use_vision_processor: ``False`` skips normalisation (mean 0, std 1: views stay in [0, 1]).
    """
    from transformers.image_processing_base import ImageProcessingMixin

    src, vision_config = _vision_config(name)
    native = getattr(vision_config, "image_size", None)
    if native is None:  # NaFlex: num_patches on a square grid
        side = int(round(vision_config.num_patches**0.5)) * vision_config.patch_size
        native = side
    size = tuple(image_size) if image_size is not None else (int(native), int(native))
    if not use_vision_processor:
        return ImagePreprocessing(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    try:
        # The processor's JSON, not the processor object: building an image processor needs torchvision on some
        # transformers releases (5.17 requires it for AutoImageProcessor), and only mean/std are needed here.
        processor, _ = ImageProcessingMixin.get_image_processor_dict(src)
        mean = tuple(float(x) for x in processor["image_mean"])
        std = tuple(float(x) for x in processor["image_std"])
    except KeyError as exc:
        raise InvalidInputError(
            f"the image processor of vision model {name!r} does not record {exc.args[0]}: record "
            "training_config.image_mean and image_std in the checkpoint metadata, or pass --data.image_mean [m, m, m] "
            "--data.image_std [s, s, s]"
        ) from exc
    except (OSError, ValueError, TypeError) as exc:
        # No guessed mean/std: a wrong normalisation silently changes every view the model sees.
        raise InvalidInputError(
            f"cannot read the image processor of vision model {name!r} ({type(exc).__name__}: {exc}) and no "
            "image_mean/image_std is given: record training_config.image_mean and image_std in the checkpoint "
            "metadata, or pass --data.image_mean [m, m, m] --data.image_std [s, s, s] (or add the processor's "
            "preprocessor_config.json to the model folder)"
        ) from exc
    return ImagePreprocessing(size, mean, std)


def load_tokenizer(name: str, image_token: str, flag: str = "--model.model_config.tokenizer_name"):
    """Load the tokenizer, left padding, and check it knows the image placeholder and a chat template.

    Args:
        name: Hub id or local folder.
        image_token: The image placeholder token that must exist.
        flag: The setting that named it (for error messages).

    Raises:
        InvalidInputError: the image token or the chat template is missing.
    """
    from transformers import AutoTokenizer

    src = _source(name, "tokenizer", flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except OSError as exc:
        raise _wrap_load_error(exc, "tokenizer", name, flag) from exc
    tokenizer.padding_side = "left"
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != image_token:
        raise InvalidInputError(
            f"tokenizer {name!r} has no token {image_token!r} (model_config.image_token); use a Qwen2/2.5/3 "
            "tokenizer or set image_token to one of its special tokens"
        )
    if not tokenizer.chat_template:
        raise InvalidInputError(f"tokenizer {name!r} has no chat_template; panollava renders prompts through it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_language_model(name: str):
    """``AutoModelForCausalLM.from_pretrained`` with a clear error when the model is unavailable."""
    from transformers import AutoModelForCausalLM

    flag = "--model.model_config.language_model_name"
    src = _source(name, "language model", flag)
    try:
        return AutoModelForCausalLM.from_pretrained(src, dtype="float32")
    except OSError as exc:
        raise _wrap_load_error(exc, "language model", name, flag) from exc


def language_model_max_positions(name: str) -> int | None:
    """The LM config's ``max_position_embeddings``, read with ``AutoConfig`` (no weights are loaded).

    Args:
        name: Hub id, local folder or ``tiny:qwen3`` (``model_config.language_model_name``).

    Returns:
        The number of positions, or None when the config does not say.
    """
    from transformers import AutoConfig

    flag = "--model.model_config.language_model_name"
    src = _source(name, "language model", flag)
    try:
        config = AutoConfig.from_pretrained(src)
    except OSError as exc:
        raise _wrap_load_error(exc, "language model", name, flag) from exc
    config = getattr(config, "text_config", None) or config
    positions = getattr(config, "max_position_embeddings", None)
    return int(positions) if positions is not None else None


def check_max_new_tokens(model_config: dict[str, Any], max_new_tokens: int, where: str = "--max_new_tokens") -> None:
    """Refuse a ``max_new_tokens`` that cannot fit the LM's positions, before any weights load.

    Reads only the LM's config (:func:`language_model_max_positions`); the prompt counts as one token here (its
    exact length is checked per batch by the caption generator, before the cache is allocated).

    Args:
        model_config: The merged ``model_config`` (``language_model_name``).
        max_new_tokens: The decoding's ``max_new_tokens``.
        where: The setting as the user gave it, for the message.

    Raises:
        InvalidInputError: ``1 + max_new_tokens`` exceeds ``max_position_embeddings``.
    """
    from panollava.generation.settings import check_positions

    check_positions(max_new_tokens, 1, language_model_max_positions(model_config["language_model_name"]), where)


def lora_settings(lora: dict[str, Any] | None) -> dict[str, Any] | None:
    """Fill a LoRA dict with the declared defaults (:class:`panollava.schema.LoraSettings`)."""
    if lora is None:
        return None
    return to_plain(typed(LoraSettings, lora))


def apply_lora(language_model, lora: dict[str, Any] | None, adapter_dir: str | None, trainable: bool):
    """Wrap the LM with a peft LoRA adapter: loaded from ``adapter_dir`` or freshly initialised from ``lora``.

    Only the LM is wrapped, so the targets can never hit the vision tower's projections.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        path = Path(adapter_dir)
        if not (path / "adapter_config.json").is_file():
            raise ModelUnavailableError(f"LoRA folder '{path.resolve()}' has no adapter_config.json")
        return PeftModel.from_pretrained(language_model, str(path), is_trainable=trainable)
    if lora is None:
        return language_model
    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=float(lora["alpha"]),  # 16.5 stays 16.5
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(language_model, config)


def build_vlm(model_config: dict[str, Any], lora: dict[str, Any] | None = None, lora_dir: str | None = None,
              lora_trainable: bool = True):
    """Build the VLM and its tokenizer from a ``model_config`` dict (the metadata's ``model_config``).

    Args:
        model_config: vision_name, language_model_name, tokenizer_name (optional), resampler_type,
            latent_dimension, image_token.
        lora: LoRA settings (None: no LoRA unless ``lora_dir`` is given).
        lora_dir: A peft adapter folder to load instead of a fresh adapter.
        lora_trainable: Whether the adapter's weights require grad.

    Returns:
        (PanoramicVLM, tokenizer).
    """
    from panollava.models.resampler import build_resampler
    from panollava.models.vlm import PanoramicVLM

    settings = typed(ModelSettings, model_config)
    image_token = settings.image_token
    if settings.tokenizer_name:
        tokenizer = load_tokenizer(settings.tokenizer_name, image_token)
    else:
        tokenizer = load_tokenizer(settings.language_model_name, image_token, "--model.model_config.language_model_name")
    vision, kind, patch = load_vision_tower(settings.vision_name)
    resampler = build_resampler(settings.resampler_type, vision.config.hidden_size, int(settings.latent_dimension))
    lm = load_language_model(settings.language_model_name)
    lm = apply_lora(lm, lora_settings(lora), lora_dir, lora_trainable)
    vlm = PanoramicVLM(vision, kind, patch, resampler, lm, tokenizer.convert_tokens_to_ids(image_token))
    return vlm, tokenizer
