"""``PanoLLaVAModule``: thin Lightning orchestration of our panoramic VLM (the ``panollava`` family).

It builds the model (:mod:`panollava.models.build`), trains it, and evaluates it through the family seam
(:class:`panollava.captioning.CaptioningModule`, with :class:`panollava.families.ours.PanoLLaVACaptionModel`). What
a checkpoint holds and the strict restore are pure functions in :mod:`panollava.checkpoint_contents`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch

from panollava.captioning import CaptioningModule
from panollava.checkpoint_contents import (
    CHECKPOINT_KEY,
    describe_checkpoint,
    pretrained_sources,
    restore_checkpoint,
)
from panollava.data.prompts import PromptEncoder
from panollava.errors import InvalidInputError
from panollava.families.ours import PanoLLaVACaptionModel, stacked_views_for
from panollava.models.build import build_vlm, load_image_preprocessing
from panollava.models.trainable import STAGE_TRAINABLE, TRAINABLE_PARTS, set_trainable
from panollava.schema import (
    REQUIRED_KEYS,
    STAGES,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    PromptSettings,
    ViewSettings,
    check_settings,
    to_plain,
    typed,
)

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_KEY", "PanoLLaVAModule"]


class PanoLLaVAModule(CaptioningModule):
    """Panoramic VLM training, validation, test (generation + caption metrics) and predict.

    The typed groups (``model_config``, ``lora``, ``prompt``, ``generation``) are declared in
    :mod:`panollava.schema` (one ``--help`` line per field); they are saved in checkpoints as plain dicts, and
    dicts (the hparams of a checkpoint) are accepted too.

    Args:
        model_config: What defines the model (vision_name and language_model_name are required).
        stage: Training stage: vision (vision tower + resampler + projector), resampler (resampler + projector) or
            finetune (LoRA + projector).
        lora: LoRA on the LM's linear projections (default in finetune: r 32, alpha 64, q/k/v/o/gate/up/down);
            null in other stages means no LoRA.
        trainable: Override which parts train (any of vision_tower, resampler, projector, lora, language_model;
            language_model trains every LM weight, e.g. for a tiny LM trained from scratch).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear learning-rate warm-up steps.
        prompt: The prompt around each query.
        generation: How captions are decoded; greedy and deterministic by default.
        lora_dir: A peft adapter folder (``lora_weights/`` of a run) to load instead of a fresh adapter.
        merge_lora: Merge the adapter into the LM weights after loading (evaluation only).
        max_answer_tokens: Training targets are cut to this many tokens.
    """

    def __init__(
        self,
        model_config: ModelSettings = ModelSettings(),
        stage: Literal["vision", "resampler", "finetune"] = "finetune",
        lora: LoraSettings | None = None,
        trainable: list[str] | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        prompt: PromptSettings = PromptSettings(),
        generation: GenerationSettings = GenerationSettings(),
        lora_dir: str | None = None,
        merge_lora: bool = False,
        max_answer_tokens: int = ViewSettings.max_answer_tokens,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise InvalidInputError(f"stage must be one of {STAGES}, got {stage!r}")
        model_config = {k: v for k, v in to_plain(model_config or {}).items() if v is not None}
        if not model_config:
            raise InvalidInputError(
                "no model settings: pass --ckpt_dir RUN_DIR (settings come from its metadata) or a --config with "
                "model.model_config"
            )
        for key in REQUIRED_KEYS:
            if not model_config.get(key):
                raise InvalidInputError(f"model_config.{key} is required (a hub id or a local model folder)")
        model_config = check_settings(model_config, "the model settings", lambda key: f"model_config.{key}")
        if trainable is not None:
            unknown = sorted(set(trainable) - set(TRAINABLE_PARTS))
            if unknown:
                raise InvalidInputError(f"unknown trainable part(s) {unknown}; choose from {TRAINABLE_PARTS}")
        if lora is None and stage == "finetune":
            lora = to_plain(LoraSettings())
        lora = {**to_plain(LoraSettings()), **to_plain(lora)} if lora is not None else None
        generation = to_plain(typed(GenerationSettings, to_plain(generation)))
        prompt = to_plain(typed(PromptSettings, to_plain(prompt)))
        self.save_hyperparameters(
            {
                "model_config": dict(model_config),
                "stage": stage,
                "lora": dict(lora) if lora is not None else None,
                "trainable": list(trainable) if trainable is not None else None,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "prompt": prompt,
                "generation": generation,
                "lora_dir": lora_dir,
                "merge_lora": merge_lora,
                "max_answer_tokens": max_answer_tokens,
            }
        )
        self.vlm = None
        self.tokenizer = None
        self.prompts = None
        self._caption_model = None

    # -- building ---------------------------------------------------------------------------------------------------
    @property
    def trainable_parts(self) -> tuple[str, ...]:
        """Parts whose weights train in this run."""
        parts = self.hparams.trainable if self.hparams.trainable is not None else STAGE_TRAINABLE[self.hparams.stage]
        return tuple(parts)

    @property
    def model_settings(self) -> ModelSettings:
        """The model settings as the typed group (the hyper-parameters hold them as a plain dict)."""
        return typed(ModelSettings, self.hparams.model_config)

    @property
    def image_size(self) -> tuple[int, int] | None:
        size = self.model_settings.image_size
        if size is None:
            return None
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def image_preprocessing(self, use_vision_processor: bool):
        """View size and normalisation for the data module (reads only the vision model's config files)."""
        return load_image_preprocessing(self.model_settings.vision_name, self.image_size, use_vision_processor)

    def configure_model(self) -> None:
        """Build the VLM (once): Lightning calls this before training or restoring weights."""
        if self.vlm is not None:
            return

        hp = self.hparams
        use_lora = hp.lora is not None or hp.lora_dir is not None
        lora_trains = "lora" in self.trainable_parts
        if lora_trains and not use_lora:
            raise InvalidInputError("'lora' is trainable but no LoRA settings were given (--model.lora)")
        self.vlm, self.tokenizer = build_vlm(hp.model_config, hp.lora, hp.lora_dir, lora_trainable=lora_trains)
        set_trainable(self.vlm, self.trainable_parts)
        prompt = typed(PromptSettings, hp.prompt)
        self.prompts = PromptEncoder(
            self.tokenizer,
            self.model_settings.image_token,
            template=prompt.template,
            system_prompt=prompt.system_prompt,
            enable_thinking=bool(prompt.enable_thinking),
            max_answer_tokens=hp.max_answer_tokens,
        )

    def merge_adapter(self) -> None:
        """Merge LoRA into the LM weights (``merge_and_unload``); used for evaluation with ``merge_lora``."""
        from peft import PeftModel

        if isinstance(self.vlm.language_model, PeftModel):
            self.vlm.language_model = self.vlm.language_model.merge_and_unload()
            logger.info("merged the LoRA adapter into the language model")

    # -- checkpoint contents (panollava.checkpoint_contents) ------------------------------------------------------
    _parts_in_checkpoint: frozenset[str] = frozenset()

    def pretrained_sources(self) -> dict[str, str]:
        """Module prefix → model name, for the base weights that checkpoints do not hold."""
        return pretrained_sources(self.hparams.model_config, self.trainable_parts, self._parts_in_checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        describe_checkpoint(checkpoint, self.state_dict(), self.hparams.model_config, self.trainable_parts,
                            self._parts_in_checkpoint, self.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint against the model and fill the base weights it does not hold (strict loading)."""
        held = restore_checkpoint(checkpoint, self.state_dict(), self.hparams.model_config, self.trainable_parts,
                                  self.tokenizer, lora_supplied=self.hparams.lora_dir is not None)
        if held is not None:
            self._parts_in_checkpoint = held

    # -- steps ----------------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # from_pretrained returns modules in eval mode; training must see dropout where a config sets it.
        self.vlm.train()

    def _num_image_tokens(self, pixel_values: torch.Tensor) -> int:
        return self.vlm.num_image_tokens(pixel_values.shape[1], tuple(pixel_values.shape[-2:]))

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        answers = [refs[0] for refs in batch["references"]]
        enc = self.prompts.encode(batch["query"], self._num_image_tokens(batch["pixel_values"]), answers)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self.vlm(pixel_values=batch["pixel_values"], **enc).loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["query"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["query"]))
        return loss

    # -- evaluation (panollava.captioning) -------------------------------------------------------------------------
    @property
    def caption_model(self):
        """Our family behind the seam (:class:`panollava.families.ours.PanoLLaVACaptionModel`), built on first use."""
        if self._caption_model is None and self.vlm is not None:
            self._caption_model = PanoLLaVACaptionModel.for_module(self)
        return self._caption_model

    def panorama_transform(self, view_settings):
        """Normalised views at the vision tower's size; reads only the vision model's config files, so the data
        module can ask before the model is built (``fit``)."""
        return stacked_views_for(view_settings, self.image_preprocessing)

    def _reset_caption_model(self) -> None:
        if self._caption_model is not None:
            self._caption_model.reset()

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise InvalidInputError(f"nothing to train: trainable parts {self.trainable_parts} have no weights")
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        warmup = int(self.hparams.warmup_steps)
        if warmup <= 0:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
