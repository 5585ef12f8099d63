"""``CaptionModel`` of the original PanoLLaVA family, and :func:`load_original_run`.

Generation reuses panollava's engine (:class:`panollava.generation.CaptionGenerator`): one vision pass per
panorama, prefix sharing, the preallocated-KV decode loop. Why that reproduces the original:

- **Prompt.** The original's user turn is ``<|vision|>\\n`` + ``In this panoramic image, please provide a concise
  but detailed description of "<query>".``, after its system message, rendered by the LM's chat template with
  ``add_generation_prompt=True, enable_thinking=False`` and tokenised with the tokenizer's defaults.
  :class:`OriginalPromptEncoder` builds exactly that and expands the single ``<|vision|>`` into N copies, whose
  embeddings :meth:`OriginalPanoramaVLM.embed_inputs` replaces by the N image tokens: the same embeddings,
  mask and positions as the original's "remove the placeholder, insert N vectors".
- **Prefix sharing is exact.** The image comes after the system message and ``<|im_start|>user\\n``, so the
  prompt up to the end of the image is the same for every query of a panorama; the engine checks this per batch
  and falls back to the plain path (with one log line) when it does not hold.
- **Decoding.** The original's ``eval.py`` ran Hugging Face ``generate`` with its defaults ``min_new_tokens=5`` and
  ``repetition_penalty=1.1`` (greedy when ``generation.temperature`` ≤ 0.1). The engine's repetition penalty acts
  on generated ids only, as ``generate`` did with a prompt given as embeddings; ``min_new_tokens`` (every stop id
  suppressed until that many new tokens exist) is the engine's own (``--min_new_tokens 5`` for eval.py's value).
- **Captions** are ``batch_decode(skip_special_tokens=True).strip()`` of the new tokens, as the original model
  returned them. ``eval.py``'s clean-up that replaced a caption without letters or digits by "I can see a
  panoramic view." is NOT applied (a placeholder never stands in for a model's output here).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panollava.data.prompts import PromptEncoder, format_user_text
from panollava.errors import InputNotFoundError, InvalidInputError
from panollava.generation.generator import CaptionGenerator
from panollava.generation.settings import DecodeSettings
from panollava.outputs.files import sha256_file
from panollava.schema import DEFAULT_PROMPT_TEMPLATE, GenerationSettings

from panollava.families.original.loading import (
    RUN_CONFIG_FILENAME,
    VISION_TOKEN,
    ChosenCheckpoint,
    LoadReport,
    Recognition,
    build_language_model,
    build_tokenizer,
    build_vision_encoder,
    check_adapter,
    choose_checkpoint,
    find_lora_dir,
    load_checkpoint,
    load_weights,
    read_original_metadata,
    read_yaml,
    recognise,
    resolve_model_path,
)
from panollava.families.original.model import (
    MLPResampler,
    OriginalPanoramaVLM,
    ProjectionPositionalEncoding,
    VisionBackbone,
)
from panollava.families.original.settings import FAMILY, ResolvedSettings, resolve_settings
from panollava.families.original.views import OriginalViewTransform, view_transform_from_processor

logger = logging.getLogger(__name__)


@dataclass
class OriginalPromptEncoder(PromptEncoder):
    """The original's prompt: ``<|vision|>\\n`` + the user text, after its system message.

    Args:
        max_text_length: The original model trimmed prompts longer than this (tokens, before the image was
            inserted); such a prompt is refused here instead of being cut.
    """

    max_text_length: int = 512

    def render(self, query: str) -> str:
        """The prompt text (one ``<|vision|>``) for ``query``."""
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": f"{self.image_token}\n{format_user_text(self.template, query)}"})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )

    def prompt_ids(self, query: str, num_image_tokens: int) -> list[int]:
        """Token ids (tokenizer defaults, as the original) with ``<|vision|>`` expanded to N copies."""
        key = (query, num_image_tokens)
        if key not in self._prompt_cache:
            ids = list(self.tokenizer(self.render(query))["input_ids"])
            where = [i for i, t in enumerate(ids) if t == self.image_token_id]
            if len(where) != 1:
                raise InvalidInputError(
                    f"the prompt for query {query!r} holds {len(where)} {self.image_token} tokens; expected exactly 1 "
                    "(remove it from the query)"
                )
            if len(ids) > self.max_text_length:
                raise InvalidInputError(
                    f"the prompt for query {query!r} has {len(ids)} tokens, more than the original model's "
                    f"max_text_length {self.max_text_length}: the original would have cut its end (the assistant "
                    "opening); shorten the query"
                )
            i = where[0]
            self._prompt_cache[key] = ids[:i] + [self.image_token_id] * num_image_tokens + ids[i + 1 :]
        return self._prompt_cache[key]


@dataclass
class OriginalCaptionModel:
    """A loaded original PanoLLaVA run (the ``CaptionModel`` of family ``panollava-v1``).

    Attributes:
        module: The :class:`OriginalPanoramaVLM` (every weight it uses; the caller moves it).
        tokenizer: The LM tokenizer with ``<|vision|>``.
        transform: The picklable view transform.
        prompts: The prompt encoder.
        decode: The decoding settings.
        run_dir: The run directory.
        checkpoint: Which file and why.
        recognition: Why the directory is an original run (None when loaded without recognition evidence).
        resolved: The settings and their sources.
        load_report: What was loaded, ignored and checked.
        share_prefix: Prefix sharing on.
    """

    module: OriginalPanoramaVLM
    tokenizer: Any
    transform: OriginalViewTransform
    prompts: OriginalPromptEncoder
    decode: DecodeSettings
    run_dir: Path
    checkpoint: ChosenCheckpoint
    recognition: Recognition | None
    resolved: ResolvedSettings
    load_report: LoadReport
    share_prefix: bool = GenerationSettings.share_prefix
    family: str = FAMILY
    _generator: CaptionGenerator | None = field(default=None, repr=False)
    _sha256: str | None = field(default=None, repr=False)

    # -- inputs -------------------------------------------------------------------------------------------------
    def panorama_transform(self, view_settings=None) -> OriginalViewTransform:
        """The run's own views (its anyres_e2p geometry, fov and overlap, recorded in the provenance): the data
        module's view settings do not apply to this family, and an image-blind run is refused."""
        if view_settings is not None and getattr(view_settings, "image_blind", False):
            raise InvalidInputError(
                "--data.image_blind is not available for runs of the original PanoLLaVA trainer (their views come "
                "from the run); evaluate an image-blind baseline trained with panollava instead"
            )
        return self.transform

    # -- generation ---------------------------------------------------------------------------------------------
    @property
    def generator(self) -> CaptionGenerator:
        if self._generator is None:
            self._generator = CaptionGenerator(self.module, self.prompts, self.decode, share_prefix=self.share_prefix)
        return self._generator

    def generate(self, batch: dict) -> list[str]:
        """One caption per sample (see :meth:`panollava.generation.CaptionGenerator.generate`)."""
        self.module.eval()
        return self.generator.generate(batch)

    def reset(self) -> None:
        """Forget carried-over panorama features."""
        if self._generator is not None:
            self._generator.reset()

    # -- provenance ---------------------------------------------------------------------------------------------
    def describe_decoding(self) -> dict:
        """Settings, path (shared_prefix/plain), eos/pad ids."""
        return self.generator.describe()

    def provenance(self) -> dict:
        """Family, names, checkpoint and why, settings with sources, what loading ignored, views, prompt."""
        return {
            "family": self.family,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint.path),
            "checkpoint_rule": self.checkpoint.rule,
            "checkpoint_reason": self.checkpoint.reason,
            "recognition": list(self.recognition.reasons) if self.recognition else [],
            "settings": self.resolved.settings.to_dict(),
            "sources": dict(self.resolved.sources),
            "assumed": dict(self.resolved.assumed),
            "load": self.load_report.lines(),
            "views": {"protocol": "original anyres_e2p", **{k: v for k, v in vars(self.transform).items()},
                      "geometry": self.transform.view_geometry()},
            "prompt": {"system": self.prompts.system_prompt, "template": self.prompts.template,
                       "image_token": VISION_TOKEN, "enable_thinking": False},
            "dtype": str(next(self.module.parameters()).dtype),
        }

    def fingerprint(self) -> dict:
        """What changes captions besides decoding: the checkpoint's sha256, settings, views, prompt."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.checkpoint.path)
        return {
            "family": self.family,
            "checkpoint_sha256": self._sha256,
            "settings": self.resolved.settings.to_dict(),
            "views": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.transform).items()},
            "prompt": {"system": self.prompts.system_prompt, "template": self.prompts.template},
        }


def load_original_run(
    run_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    config_yaml: str | os.PathLike[str] | None = None,
    decode: DecodeSettings | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    share_prefix: bool = GenerationSettings.share_prefix,
    check_lora_weights: bool = True,
) -> OriginalCaptionModel:
    """Load a run directory of the original PanoLLaVA trainer as a caption model.

    Args:
        run_dir: The run directory (``runs/<exp>/<stage>/<crop>_<resampler>/``).
        checkpoint: None or ``"best"`` (``best.ckpt`` link, else the lowest loss in a file name), ``"last"``, or
            a ``.ckpt`` file (absolute, else relative to the current directory, then the run directory).
        config_yaml: The original training YAML, used where the run records nothing (see
            :mod:`.settings`).
        decode: Decoding settings (default: greedy, the schema's defaults).
        base_dir: The directory relative model paths are resolved against (the original's working directory;
            default: the current directory).
        share_prefix: Prefill the image prefix once per panorama (exact for this family's prompts).
        check_lora_weights: Read ``lora_weights/`` (weights-only) and compare it with the checkpoint.

    Returns:
        The caption model (on CPU, fp32, eval mode).

    Raises:
        InputNotFoundError: no run directory or no checkpoint.
        InvalidInputError: a file asks to run code, the settings contradict the weights, an unsupported resampler,
            crop strategy or stitching mode, or weights that do not fit.
        ModelUnavailableError: a model name cannot be found.
    """
    run_path = Path(os.path.abspath(os.fspath(run_dir)))
    if not run_path.is_dir():
        raise InputNotFoundError(f"run directory '{run_path}' does not exist or is not a directory")
    base = Path(os.path.abspath(os.fspath(base_dir))) if base_dir is not None else Path.cwd()
    decode = decode if decode is not None else DecodeSettings()
    recognition = recognise(run_path)
    chosen = choose_checkpoint(run_path, checkpoint)
    logger.info("original PanoLLaVA checkpoint: %s (%s)", chosen.path, chosen.reason)
    ckpt = load_checkpoint(chosen.path)
    state_dict = ckpt["state_dict"]
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}

    metadata, problem = read_original_metadata(run_path)
    warnings: list[str] = []
    if problem is not None:
        warnings.append(problem)
        logger.warning("%s", problem)
    run_config_path = run_path / RUN_CONFIG_FILENAME
    run_config = read_yaml(run_config_path) if run_config_path.is_file() else None
    user_config = None
    user_name = "--config"
    if config_yaml is not None:
        config_path = Path(os.path.abspath(os.fspath(config_yaml)))
        if not config_path.is_file():
            raise InputNotFoundError(f"config '{config_path}' does not exist")
        user_config, user_name = read_yaml(config_path), f"--config {config_path}"
    hparams = ckpt.get("hyper_parameters") or {}
    resolved = resolve_settings(
        hparams=hparams, datamodule_hparams=ckpt.get("datamodule_hyper_parameters"), shapes=shapes,
        metadata=metadata, run_config=run_config, user_config=user_config, user_config_name=user_name,
        checkpoint_name=f"'{chosen.path}'",
    )
    resolved.warnings[:0] = warnings
    s = resolved.settings

    vision_path = resolve_model_path(s.vision_name, base)
    lm_path = resolve_model_path(s.language_model_name, base)
    encoder, vision_hidden, patch = build_vision_encoder(vision_path)
    weights_vision_hidden = shapes.get("model.vision_backbone.encoder.embeddings.patch_embedding.weight", (None,))[0]
    if weights_vision_hidden is not None and weights_vision_hidden != vision_hidden:
        raise InvalidInputError(
            f"vision model {s.vision_name!r} has hidden size {vision_hidden} but the checkpoint's vision tower has "
            f"{weights_vision_hidden}: another vision model than the run's"
        )
    embedding_rows = next((v[0] for k, v in shapes.items() if k.startswith("model.language_model.")
                           and k.endswith("embed_tokens.weight")), None)
    if embedding_rows is None:
        raise InvalidInputError(f"'{chosen.path}' holds no language-model embeddings (model.language_model.…)")
    tokenizer, vision_id = build_tokenizer(lm_path, embedding_rows)
    language_model = build_language_model(lm_path, embedding_rows, s)
    positional = (
        ProjectionPositionalEncoding(s.latent_dimension, s.model_overlap_ratio, s.pe_enable_continuity,
                                     s.pe_temperature, s.pe_spatial_encoding_type)
        if s.use_projection_pe else None
    )
    vlm = OriginalPanoramaVLM(
        vision=VisionBackbone(encoder, vision_hidden, s.use_vicreg_norm),
        patch_size=patch,
        resampler=MLPResampler(vision_hidden, s.latent_dimension, s.resampler_hidden_dim, s.resampler_depth,
                               s.resampler_use_ln),
        positional=positional,
        language_model=language_model,
        vision_token_id=vision_id,
        stitching_mode=s.stitching_mode,
        overlap_ratio=s.model_overlap_ratio,
    )
    report = load_weights(vlm, state_dict, chosen.path)
    lora_dir = find_lora_dir(run_path)
    if lora_dir is not None and check_lora_weights:
        check_adapter(lora_dir, state_dict, s, report)
    for line in report.lines():
        logger.info("%s", line)
    vlm.eval()
    del ckpt, state_dict

    transform = view_transform_from_processor(vision_path, s.fov_deg, s.image_overlap_ratio)
    prompts = OriginalPromptEncoder(
        tokenizer=tokenizer, image_token=VISION_TOKEN, template=DEFAULT_PROMPT_TEMPLATE, system_prompt=s.system_msg,
        enable_thinking=False, max_text_length=s.max_text_length,
    )
    return OriginalCaptionModel(
        module=vlm, tokenizer=tokenizer, transform=transform, prompts=prompts, decode=decode,
        run_dir=run_path, checkpoint=chosen, recognition=recognition, resolved=resolved, load_report=report,
        share_prefix=share_prefix,
    )
