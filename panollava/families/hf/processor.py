"""The model's own processor, and the model inputs of one panorama and of one prompt.

**Loading.** ``AutoProcessor.from_pretrained(folder)`` first. Where it cannot be built (under transformers 5 the
Qwen2-VL / Qwen2.5-VL and InternVL processors insist on a video processor, which needs torchvision: not importable
beside torch 2.13 CPU), the family builds the *same processor class* from the folder's parts: the image processor
(``AutoImageProcessor``, which picks the Pil variant without torchvision; under transformers 5.17, where
``AutoImageProcessor`` itself needs torchvision, the Pil variant of the class the folder names), the tokenizer,
the chat template and the processor's own settings (``processor_config.json``), with no video processor. Every step of the input
assembly below is then the processor's own code, so both ways give the same inputs (checked by
``tests/test_hf_family.py`` where torchvision imports, and against ``AutoProcessor`` for the families whose
processor builds without it).

**Inputs, split in two.** A processor call does two things: it runs the image processor on the images and expands
each image placeholder of the text into the model's image tokens (``replace_image_token``), then tokenises and adds
the multimodal token-type ids. The image half depends only on the panorama, so it runs once per panorama
(:class:`PanoramaProcessor`, in the loader's workers); the text half runs per prompt
(:func:`prompt_inputs`), through the processor's own ``__call__`` with the panorama's precomputed image outputs
handed in place of its image step. Nothing else of the call changes: placeholder counts are validated, text
kwargs merged, token-type ids built and renamed exactly as for a plain ``processor(images=..., text=...)``; as in
the processor's ``apply_chat_template(..., tokenize=True)``, a prompt that already starts with the BOS token is
tokenised without special tokens.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panollava.data.views import ViewConfig, render_views, resize_panorama
from panollava.errors import InvalidInputError, ModelUnavailableError

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedProcessor",
    "PanoramaProcessor",
    "load_processor",
    "panorama_images",
    "prompt_inputs",
    "render_prompt",
]


@dataclass
class LoadedProcessor:
    """A processor and how it was obtained.

    Attributes:
        processor: The ``ProcessorMixin`` instance.
        how: ``"AutoProcessor"`` or ``"assembled"`` (the processor class built from the folder's parts).
        reason: Why ``AutoProcessor`` was not used (None when it was).
        chat_template: The chat template in use.
    """

    processor: Any
    how: str
    reason: str | None
    chat_template: str


@functools.lru_cache(maxsize=None)
def _no_video_subclass(processor_cls: type) -> type:
    """``processor_cls`` accepting ``video_processor=None`` (images only: the video half needs torchvision).

    Instances pickle through :func:`_rebuild_images_only` (the class is made at run time, so pickle cannot find
    it by name)."""

    class ImagesOnly(processor_cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def __reduce__(self):
            return _rebuild_images_only, (processor_cls, self.__dict__)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = f"{processor_cls.__name__}ImagesOnly"
    return ImagesOnly


def _rebuild_images_only(processor_cls: type, state: dict) -> Any:
    cls = _no_video_subclass(processor_cls)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _processor_class(folder: Path, model_type: str) -> type:
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = None
    for config_name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / config_name
        if path.is_file():
            try:
                name = json.loads(path.read_text(encoding="utf-8")).get("processor_class")
            except (OSError, ValueError):
                name = None
            if name:
                break
    name = name or PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise ModelUnavailableError(
            f"cannot tell which processor class serves '{folder}' (model_type {model_type!r}): no processor_class in "
            "its processor_config.json / preprocessor_config.json / tokenizer_config.json and none registered for "
            "the model type; pass a complete model folder (processor and tokenizer files included)"
        )
    return cls


def _image_processor(folder: Path) -> Any:
    """The folder's image processor: ``AutoImageProcessor`` (which picks the Pil variant without torchvision),
    else, where ``AutoImageProcessor`` itself needs torchvision (transformers 5.17), the Pil variant of the class
    its config names."""
    import transformers
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(folder))
    except ImportError as exc:
        name = None
        for config_name in ("preprocessor_config.json", "processor_config.json"):
            path = folder / config_name
            if path.is_file():
                config = json.loads(path.read_text(encoding="utf-8"))
                config = config.get("image_processor", config) if config_name == "processor_config.json" else config
                name = config.get("image_processor_type")
                if name:
                    break
        base = (name or "").removesuffix("Fast").removesuffix("Pil")
        cls = getattr(transformers, f"{base}Pil", None) if base else None
        if cls is None:
            raise exc
        return cls.from_pretrained(str(folder))


def _assemble(folder: Path, model_type: str) -> Any:
    from transformers import AutoTokenizer

    cls = _processor_class(folder, model_type)
    processor_dict, _ = cls.get_processor_dict(str(folder))
    attributes = cls.get_attributes()
    parts: dict[str, Any] = {}
    for attribute in attributes:
        if attribute == "image_processor":
            parts[attribute] = _image_processor(folder)
        elif attribute == "tokenizer":
            parts[attribute] = AutoTokenizer.from_pretrained(str(folder))
        elif attribute == "video_processor":
            parts[attribute] = None
        else:
            raise ModelUnavailableError(
                f"the processor {cls.__name__} of '{folder}' needs a {attribute!r}, which this family cannot build "
                "without AutoProcessor; install what AutoProcessor asks for (see the error above)"
            )

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs", *attributes}
    settings = {k: v for k, v in processor_dict.items() if k in accepted}
    subclass = _no_video_subclass(cls) if "video_processor" in attributes else cls
    return subclass(**parts, **settings)


def load_processor(folder: str | Path, model_type: str, force_assembled: bool = False) -> LoadedProcessor:
    """The model's processor (``AutoProcessor``, else assembled from its parts), with its chat template.

    Args:
        folder: Local model folder (a resolved hub snapshot or the user's folder).
        model_type: ``config.model_type`` (to find the processor class when no file names it).
        force_assembled: Build from the parts even where ``AutoProcessor`` works (tests compare both).

    Returns:
        The processor and how it was obtained.

    Raises:
        ModelUnavailableError: When neither way builds a processor with an image processor and a tokenizer.
        InvalidInputError: When neither the processor nor the tokenizer has a chat template.
    """
    from transformers import AutoProcessor
    from transformers.processing_utils import ProcessorMixin

    folder = Path(folder)
    reason = "forced (force_assembled=True)" if force_assembled else None
    processor = None
    if not force_assembled:
        try:
            processor = AutoProcessor.from_pretrained(str(folder))
            if not isinstance(processor, ProcessorMixin) or not hasattr(processor, "image_processor"):
                reason = f"AutoProcessor returned a {type(processor).__name__}, not a processor with an image processor"
                processor = None
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the parts, saying why
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    how = "AutoProcessor"
    if processor is None:
        how = "assembled"
        try:
            processor = _assemble(folder, model_type)
        except ModelUnavailableError:
            raise
        except Exception as exc:
            raise ModelUnavailableError(
                f"cannot build the processor of '{folder}': AutoProcessor failed ({reason}) and building "
                f"{model_type!r}'s processor from the folder's image processor, tokenizer and chat template failed "
                f"too ({type(exc).__name__}: {exc}); pass a complete model folder"
            ) from exc
        logger.info("processor of '%s' assembled from its parts (%s)", folder, reason)
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    if not template:
        raise InvalidInputError(
            f"the model folder '{folder}' has no chat template (no chat_template.jinja / chat_template.json, none "
            "in tokenizer_config.json): the hf family renders every prompt with the model's own template. Use the "
            "instruction-tuned checkpoint, or add its chat_template.jinja to the folder"
        )
    processor.chat_template = template
    return LoadedProcessor(processor=processor, how=how, reason=reason, chat_template=template)


def merged_call_kwargs(processor: Any) -> dict[str, dict]:
    """The processor's kwargs per modality as its ``__call__`` merges them (defaults, tokenizer init kwargs,
    ``return_tensors="pt"``)."""
    tokenizer_init = processor.tokenizer.init_kwargs if hasattr(processor, "tokenizer") else {}
    first = inspect.signature(processor._merge_kwargs).parameters.get("ModelProcessorKwargs")
    if first is not None and first.default is inspect.Parameter.empty:  # transformers 5.17: passed explicitly
        return processor._merge_kwargs(
            processor.valid_processor_kwargs, tokenizer_init_kwargs=tokenizer_init, return_tensors="pt"
        )
    return processor._merge_kwargs(tokenizer_init_kwargs=tokenizer_init, return_tensors="pt")


def panorama_images(panorama: torch.Tensor, views: ViewConfig, max_side: int | None = None) -> list[np.ndarray]:
    """The images a model is given for one panorama, in order (see ``docs/baselines.md``).

    ``resize``: the whole panorama, aspect ratio kept, handed to the processor (which resizes it its own way);
    with ``max_side``, a panorama whose longer side exceeds it is first reduced to that side, aspect kept, with
    an antialiased (smoothing) bilinear filter (:func:`panollava.data.views.resize_panorama`); the other
    strategies: :func:`panollava.data.views.render_views` at ``views.image_size`` (``cubemap``:
    F, R, B, L; ``anyres_e2p``: the letterboxed global view, then the tiles row by row, yaw 0, 45, ..., -45),
    rounded to 8-bit RGB.

    Args:
        panorama: uint8 ``(3, H, W)`` RGB.
        views: The view settings.
        max_side: ``resize`` only: longest side handed to the processor (None: the panorama as decoded).

    Returns:
        ``(H, W, 3)`` uint8 arrays.
    """
    if not isinstance(panorama, torch.Tensor) or panorama.ndim != 3 or panorama.shape[0] != 3:
        got = getattr(panorama, "shape", panorama)
        raise InvalidInputError(f"the panorama must be a uint8 (3, H, W) tensor, got {got!r}")
    if views.crop_strategy == "resize":
        if panorama.dtype != torch.uint8:
            raise InvalidInputError(f"the panorama must be uint8, got {panorama.dtype}")
        height, width = panorama.shape[1:]
        if max_side is not None and max(height, width) > max_side:
            scale = max_side / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            reduced = resize_panorama(panorama, size)  # float in [0, 1], antialiased
            panorama = (reduced * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return [np.ascontiguousarray(panorama.permute(1, 2, 0).numpy())]
    rendered = render_views(panorama, views)  # (V, 3, h, w) float in [0, 1]
    as_uint8 = (rendered * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return [np.ascontiguousarray(v.permute(1, 2, 0).numpy()) for v in as_uint8]


@dataclass
class PanoramaProcessor:
    """Picklable ``panorama → image inputs`` (the image half of a processor call), for loader workers.

    Args:
        image_processor: The model's image processor.
        images_kwargs: The processor's merged image kwargs (``return_tensors="pt"`` included).
        views: The view settings.
        resize_max_side: ``resize`` only: longest side handed to the processor (None: as decoded).
    """

    image_processor: Any
    images_kwargs: dict
    views: ViewConfig
    resize_max_side: int | None = None
    on_device = False  # PIL images into the model's image processor: CPU, in the loader (a ClassVar, not a field)

    @staticmethod
    def collate(items) -> list[dict[str, Any]]:
        """The batch's ``pixel_values``: the P panoramas' image inputs, as a list."""
        return list(items)

    def __call__(self, panorama: torch.Tensor) -> dict[str, Any]:
        """Image inputs of one panorama.

        Args:
            panorama: uint8 ``(3, H, W)`` RGB.

        Returns:
            ``{"num_images": n, "image_inputs": {name: tensor}}``: what the image processor returns for the
            panorama's ``n`` images (e.g. ``pixel_values``, ``image_grid_thw``).
        """
        from PIL import Image

        images = [Image.fromarray(a) for a in panorama_images(panorama, self.views, self.resize_max_side)]
        out = self.image_processor(images, **self.images_kwargs)
        return {"num_images": len(images), "image_inputs": dict(out)}


def render_prompt(processor: Any, chat_template: str, num_images: int, user_text: str) -> str:
    """The prompt text: one user turn holding the images first, then ``user_text``; the generation prompt.

    Args:
        processor: The processor (its ``apply_chat_template`` renders multimodal content).
        chat_template: The template.
        num_images: Images in the turn.
        user_text: The filled prompt template.

    Returns:
        The rendered text with one image placeholder per image.
    """
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": user_text}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], chat_template=chat_template, tokenize=False,
        add_generation_prompt=True,
    )


class _PrecomputedImages:
    """Stands in for the image processor inside one processor call: returns the panorama's outputs."""

    def __init__(self, image_processor: Any, outputs: dict[str, Any]) -> None:
        self._image_processor = image_processor
        self._outputs = outputs

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        from transformers.feature_extraction_utils import BatchFeature

        return BatchFeature(dict(self._outputs))

    def fetch_images(self, images: Any) -> Any:
        return images

    def __getattr__(self, name: str) -> Any:
        return getattr(self._image_processor, name)


def prompt_inputs(
    processor: Any, text: str, image_inputs: dict[str, Any], num_images: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Text inputs of one prompt, by the processor's own ``__call__`` with the images already processed.

    The call runs on a shallow copy of the processor whose image processor returns ``image_inputs`` instead of
    processing the stand-in images it is handed; everything else (placeholder checks, expansion by
    ``replace_image_token``, tokenisation, token-type ids) is the processor's own code.

    Args:
        processor: The processor.
        text: The rendered prompt (its placeholders for ``num_images`` images).
        image_inputs: The panorama's image-processor outputs.
        num_images: How many images they hold.

    Returns:
        ``(text_inputs, image_keys)``: ``(1, L)`` tensors ``input_ids``, ``attention_mask`` and any token-type
        ids the processor adds (``mm_token_type_ids``, ``token_type_ids``); and the names of the image inputs
        the processor's call hands the model (it drops some, e.g. Gemma 3's ``num_crops``, InternVL's
        ``num_patches``).

    Raises:
        InvalidInputError: When the prompt's placeholders do not match the images (e.g. the template drops
            images, or the query holds an image token).
    """
    from PIL import Image

    call = copy.copy(processor)  # shallow: only this copy's image processor is replaced
    call.image_processor = _PrecomputedImages(processor.image_processor, image_inputs)
    stand_ins = [Image.new("RGB", (1, 1)) for _ in range(num_images)]  # counted by the checks, never processed
    # as the processor's own apply_chat_template(tokenize=True) does: a prompt that already starts with the BOS
    # token (Gemma's template) is tokenised without adding special tokens again
    bos = getattr(processor.tokenizer, "bos_token", None)
    extra = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    try:
        out = call(images=stand_ins, text=[text], return_tensors="pt", **extra)
    except ValueError as exc:
        raise InvalidInputError(
            f"the prompt does not fit the {num_images} image(s) of the panorama: {exc}. Check that the model's chat "
            f"template places an image for each {{'type': 'image'}} item (and that the query holds no image token). "
            f"Prompt: {text[:500]!r}"
        ) from exc
    text_inputs = {k: v for k, v in out.items() if k not in image_inputs and isinstance(v, torch.Tensor)}
    return text_inputs, [k for k in out if k in image_inputs]


def chat_template_sha256(template: str) -> str:
    """sha256 of the chat template's text."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def image_processor_settings(image_processor: Any) -> dict[str, Any]:
    """The image processor's settings as plain JSON values (class name included)."""
    settings = json.loads(json.dumps(image_processor.to_dict(), default=str))
    settings["class"] = type(image_processor).__name__
    return settings


def processor_settings(processor: Any, images_kwargs: dict) -> dict[str, Any]:
    """The processor's own settings (e.g. ``image_seq_length``, ``patch_size``) and the image kwargs its call
    passes, as plain JSON values (the sub-processors and the chat template are recorded apart)."""
    own = {k: v for k, v in processor.to_dict().items()
           if k not in ("image_processor", "tokenizer", "video_processor", "chat_template")
           and not isinstance(v, dict)}
    return json.loads(json.dumps({"settings": own, "images_kwargs": images_kwargs}, default=str))

