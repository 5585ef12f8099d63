"""``PanoLLaVAModule``: thin Lightning orchestration of the panoramic VLM.

What a checkpoint holds: the weights that training can change — resampler and projector always, the vision tower
when it is trained, the LoRA tensors when LoRA is on — and, under ``checkpoint["panollava"]``, which module
prefixes are *not* in it because they are reloaded from the named pretrained models. Loading is strict: a key
missing from a checkpoint must belong to a prefix listed there, whose source model name matches the current model
config; anything else is an error that names the keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch

from panollava.errors import InvalidInputError
from panollava.schema import STAGES, GenerationSettings, LoraSettings, ModelSettings, PromptSettings, to_plain

logger = logging.getLogger(__name__)

TRAINABLE_PARTS = ("vision_tower", "resampler", "projector", "lora", "language_model")
STAGE_TRAINABLE = {
    "vision": ("vision_tower", "resampler", "projector"),
    "resampler": ("resampler", "projector"),
    "finetune": ("lora", "projector"),
}
DEFAULT_GENERATION = to_plain(GenerationSettings())
DEFAULT_PROMPT = to_plain(PromptSettings())
CHECKPOINT_KEY = "panollava"


class PanoLLaVAModule(L.LightningModule):
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
        max_answer_tokens: int = 128,
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
        for key in ("vision_name", "language_model_name"):
            if not model_config.get(key):
                raise InvalidInputError(f"model_config.{key} is required (a hub id or a local model folder)")
        from panollava.models.resampler import build_resampler, RESAMPLERS

        if model_config.get("resampler_type", "mlp") not in RESAMPLERS:
            build_resampler(model_config["resampler_type"], 1, 1)  # raises the error that names the choices
        if trainable is not None:
            unknown = sorted(set(trainable) - set(TRAINABLE_PARTS))
            if unknown:
                raise InvalidInputError(f"unknown trainable part(s) {unknown}; choose from {TRAINABLE_PARTS}")
        if lora is None and stage == "finetune":
            lora = to_plain(LoraSettings())
        lora = {**to_plain(LoraSettings()), **to_plain(lora)} if lora is not None else None
        generation = {**DEFAULT_GENERATION, **to_plain(generation or {})}
        prompt = {**DEFAULT_PROMPT, **to_plain(prompt or {})}
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
        self._caption_generator = None
        self.eval_error: Exception | None = None
        self.test_scores = None  # CaptionScores of the last test, set by EvaluationWriter

    # -- building ---------------------------------------------------------------------------------------------------
    @property
    def trainable_parts(self) -> tuple[str, ...]:
        """Parts whose weights train in this run."""
        parts = self.hparams.trainable if self.hparams.trainable is not None else STAGE_TRAINABLE[self.hparams.stage]
        return tuple(parts)

    @property
    def image_size(self) -> tuple[int, int] | None:
        size = self.hparams.model_config.get("image_size")
        if size is None:
            return None
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def image_preprocessing(self, use_vision_processor: bool = True):
        """View size and normalisation for the data module (reads only the vision model's config files)."""
        from panollava.models.build import load_image_preprocessing

        return load_image_preprocessing(self.hparams.model_config["vision_name"], self.image_size, use_vision_processor)

    def configure_model(self) -> None:
        """Build the VLM (once): Lightning calls this before training or restoring weights."""
        if self.vlm is not None:
            return
        from panollava.data.prompts import PromptEncoder
        from panollava.models.build import build_vlm

        hp = self.hparams
        use_lora = hp.lora is not None or hp.lora_dir is not None
        lora_trains = "lora" in self.trainable_parts
        if lora_trains and not use_lora:
            raise InvalidInputError("'lora' is trainable but no LoRA settings were given (--model.lora)")
        self.vlm, self.tokenizer = build_vlm(hp.model_config, hp.lora, hp.lora_dir, lora_trainable=lora_trains)
        self._set_trainable()
        self.prompts = PromptEncoder(
            self.tokenizer,
            hp.model_config.get("image_token", "<|image_pad|>"),
            template=hp.prompt["template"],
            system_prompt=hp.prompt.get("system_prompt"),
            enable_thinking=bool(hp.prompt.get("enable_thinking", False)),
            max_answer_tokens=hp.max_answer_tokens,
        )

    def _set_trainable(self) -> None:
        parts = self.trainable_parts
        for name, param in self.vlm.named_parameters():
            if "lora_" in name:
                param.requires_grad = "lora" in parts
            elif name.startswith("vision_tower."):
                param.requires_grad = "vision_tower" in parts
            elif name.startswith("resampler."):
                param.requires_grad = "resampler" in parts
            elif name.startswith("projector."):
                param.requires_grad = "projector" in parts
            elif name.startswith("language_model."):
                param.requires_grad = "language_model" in parts
            else:
                param.requires_grad = False

    def merge_adapter(self) -> None:
        """Merge LoRA into the LM weights (``merge_and_unload``); used for evaluation with ``merge_lora``."""
        from peft import PeftModel

        if isinstance(self.vlm.language_model, PeftModel):
            self.vlm.language_model = self.vlm.language_model.merge_and_unload()
            logger.info("merged the LoRA adapter into the language model")

    # -- checkpoint contents --------------------------------------------------------------------------------------
    def _saved_in_checkpoint(self, key: str) -> bool:
        """Whether a state-dict key is stored in checkpoints (else it is reloaded from a named model)."""
        name = key[len("vlm.") :] if key.startswith("vlm.") else key
        if "lora_" in name:
            return True
        if name.startswith(("resampler.", "projector.")):
            return True
        for part in ("vision_tower", "language_model"):
            if name.startswith(part + "."):
                return part in self.trainable_parts or part in self._parts_in_checkpoint
        return False

    _parts_in_checkpoint: frozenset[str] = frozenset()

    def _from_pretrained_sources(self) -> dict[str, str]:
        """Module prefix → model name, for the base weights that checkpoints do not hold."""
        mc = self.hparams.model_config
        sources = {}
        for part, key in (("language_model", "language_model_name"), ("vision_tower", "vision_name")):
            if part not in self.trainable_parts and part not in self._parts_in_checkpoint:
                sources[f"vlm.{part}."] = mc[key]
        return sources

    def _base_fingerprints(self, sources: dict[str, str]) -> dict[str, str]:
        """A cheap fingerprint of the weights reloaded from each named model (not the full data: shapes and a
        sum of the first values of every tensor), to detect a base model that changed since training."""
        import hashlib

        digests = {prefix: hashlib.sha256() for prefix in sources}
        for name, tensor in self.state_dict().items():
            for prefix, digest in digests.items():
                if name.startswith(prefix) and not self._saved_in_checkpoint(name):
                    head = tensor.detach().reshape(-1)[:4096].double()
                    digest.update(f"{name}{tuple(tensor.shape)}{head.sum().item():.6e}".encode())
        return {prefix: d.hexdigest()[:16] for prefix, d in digests.items()}

    def _tokenizer_fingerprint(self) -> str:
        """sha256 (16 hex digits) of the tokenizer's vocabulary: token ids must mean what they meant in training."""
        import hashlib
        import json

        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])
        return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if not self._saved_in_checkpoint(k)]:
            del state[key]
        sources = self._from_pretrained_sources()
        checkpoint[CHECKPOINT_KEY] = {
            "tokenizer_fingerprint": self._tokenizer_fingerprint(),
            "from_pretrained": sources,
            "base_fingerprints": self._base_fingerprints(sources),
            "saved_keys": len(state),
            "trainable_parts": list(self.trainable_parts),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint against the model and fill the base weights it does not hold (strict loading)."""
        info = checkpoint.get(CHECKPOINT_KEY)
        state = checkpoint["state_dict"]
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise InvalidInputError(
                f"checkpoint holds {len(unexpected)} weight(s) this model does not have, e.g. {unexpected[:5]}; "
                "the model settings (metadata model_config / LoRA) do not match the run that wrote it"
            )
        expected_tokenizer = (info or {}).get("tokenizer_fingerprint")
        if expected_tokenizer is not None and expected_tokenizer != self._tokenizer_fingerprint():
            mc = self.hparams.model_config
            raise InvalidInputError(
                f"the tokenizer loaded from {mc.get('tokenizer_name') or mc['language_model_name']!r} has another "
                f"vocabulary than the one the checkpoint was trained with (fingerprint {self._tokenizer_fingerprint()} "
                f"!= {expected_tokenizer}); load the same tokenizer"
            )
        missing = sorted(set(own) - set(state))
        if not missing:
            return
        if info is None:
            raise InvalidInputError(
                f"checkpoint lacks {len(missing)} weight(s), e.g. {missing[:5]}, and does not say where they come "
                "from (no 'panollava' entry): it was not written by panollava"
            )
        sources: dict[str, str] = info["from_pretrained"]
        # LoRA tensors sit under the LM's prefix but never come from the pretrained LM: a fresh adapter (B = 0) would
        # silently evaluate the base model. They may be missing only when an adapter folder (lora_dir) supplies them.
        lora_supplied = self.hparams.lora_dir is not None
        unexplained = [
            k for k in missing if ("lora_" in k and not lora_supplied) or not any(k.startswith(p) for p in sources)
        ]
        if unexplained:
            raise InvalidInputError(
                f"checkpoint lacks {len(unexplained)} weight(s) that are not reloaded from a pretrained model, "
                f"e.g. {unexplained[:5]}"
            )
        mc = self.hparams.model_config
        current = {"vlm.language_model.": mc["language_model_name"], "vlm.vision_tower.": mc["vision_name"]}
        for prefix, name in sources.items():
            if any(k.startswith(prefix) for k in missing) and current.get(prefix) != name:
                raise InvalidInputError(
                    f"checkpoint expects the '{prefix[4:-1]}' weights from {name!r} but the model was built from "
                    f"{current.get(prefix)!r}; use the model names the run was trained with"
                )
        self._parts_in_checkpoint = frozenset(
            part for part in ("vision_tower", "language_model") if f"vlm.{part}." not in sources
        )
        recorded = info.get("base_fingerprints") or {}
        current_fp = self._base_fingerprints({p: n for p, n in sources.items() if p in recorded})
        for prefix, fingerprint in current_fp.items():
            if fingerprint != recorded[prefix]:
                raise InvalidInputError(
                    f"the '{prefix[4:-1]}' weights loaded from {sources[prefix]!r} differ from those the checkpoint "
                    f"was trained with (fingerprint {fingerprint} != {recorded[prefix]}); load the same base model"
                )
        for key in missing:
            state[key] = own[key]

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

    @property
    def caption_generator(self):
        """The one owner of decoding (``panollava.generation.CaptionGenerator``), built on first use."""
        if self._caption_generator is None and self.vlm is not None:
            from panollava.generation import CaptionGenerator, DecodeSettings

            gen = self.hparams.generation
            self._caption_generator = CaptionGenerator(
                self.vlm,
                self.prompts,
                DecodeSettings.from_dict(gen),
                share_prefix=bool(gen.get("share_prefix", True)),
                compile_decode=bool(gen.get("compile_decode", False)),
            )
        return self._caption_generator

    @torch.no_grad()
    def generate_captions(self, batch: dict[str, Any]) -> list[str]:
        """Captions for a batch, one per sample (see ``panollava.generation``)."""
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        return self.caption_generator.generate(batch)

    def _records(self, batch: dict[str, Any], predictions: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {
                "index": int(batch["index"][i]),
                "sample_id": batch["sample_id"][i],
                "image": batch["image"][i],
                "image_path": batch["image_path"][i],
                "query": batch["query"][i],
                "prediction": predictions[i],
                "references": list(batch["references"][i]),
            }
            for i in range(len(predictions))
        ]

    def _evaluation_step(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Records of one evaluation batch. A failure is kept on ``eval_error`` (and the rank's remaining batches
        are skipped) instead of raised, so that the evaluation writer can end every rank with it at the epoch's
        end; on a single process it is raised at once."""
        if self.eval_error is not None or not batch["sample_id"]:
            return []
        try:
            if batch.get("error") is not None:
                raise batch["error"]
            return self._records(batch, self.generate_captions(batch))
        except Exception as exc:  # noqa: BLE001 - reported by EvaluationWriter on every rank
            if self.trainer.world_size == 1:
                raise
            logger.error("rank %d: %s: %s", self.global_rank, type(exc).__name__, exc)
            self.eval_error = exc
            return []

    def _start_evaluation(self) -> None:
        self.eval_error = None
        if self._caption_generator is not None:
            self._caption_generator.reset()  # no features carried over from an earlier run in this process

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()
        self.test_scores = None

    def on_predict_epoch_start(self) -> None:
        self._start_evaluation()

    def _end_evaluation(self) -> None:
        if self._caption_generator is not None:
            self._caption_generator.reset()  # releases a KV cache kept for compile_decode

    def on_test_epoch_end(self) -> None:
        self._end_evaluation()

    def on_predict_epoch_end(self) -> None:
        self._end_evaluation()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return self._evaluation_step(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return self._evaluation_step(batch)

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
