"""``RunDirectoryWriter``: training writes the run directory evaluation reads (SPEC §1).

After every validation (sanity checks excluded) it saves a checkpoint named by the convention, then on rank 0:
updates ``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (newest) as relative links replaced atomically,
writes the best checkpoint's LoRA adapter to ``lora_weights/`` (peft ``save_pretrained``, safetensors), and
rewrites ``checkpoint_metadata.json``. Metadata is written here rather than in ``on_save_checkpoint``, so it
appears with weights-only checkpoints too.

Resumed training keeps the whole history. When the run directory already holds a run (``fit --ckpt_path
<run>/last.ckpt``, or ``--exist_ok true``), the checkpoint list is rebuilt at fit start from
``checkpoint_metadata.json`` (``checkpoints.all``, entries whose file still exists) plus any convention-named
``*.ckpt`` it does not list (a crash between the save and the metadata write; loss read from the name). Best,
last, ``lora_weights/`` and the metadata then cover every segment. Rebuilding from the files, rather than keeping
the list in the checkpoint's callback state, works with weights-only checkpoints and with any checkpoint chosen.

A missing or non-finite ``val/loss`` is recorded as ``val_loss: null`` with a ``val_loss_note``; ``best.ckpt``
is the lowest *finite* loss, and there is no ``best.ckpt`` while no epoch has one (evaluation then uses
``last.ckpt`` and says so).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from panollava.errors import InvalidInputError
from panollava.metadata import build_metadata, write_metadata
from panollava.rundir import (
    BEST_LINK,
    LAST_LINK,
    checkpoint_filename,
    parse_checkpoint_filename,
    run_dir_path,
    update_link,
)
from panollava.schema import METADATA_FILENAME, ViewSettings, typed

logger = logging.getLogger(__name__)


class RunDirectoryWriter(Callback):
    """Writes checkpoints, links, the LoRA adapter and ``checkpoint_metadata.json`` into the run directory.

    Args:
        experiment_name: First level of the run directory.
        runs_root: Folder holding experiments (relative to the current directory).
        dataset_name: Dataset part of checkpoint names (default: the training CSV's stem).
        save_top_k: Keep only the k best checkpoints (best and last are always kept); -1 keeps all.
        save_weights_only: Save weights only (no optimizer state) in checkpoints.
        exist_ok: Allow writing into a run directory that already holds checkpoints.
        tensorboard: Log to TensorBoard inside the run directory (``fit``'s default when no ``--trainer.logger``
            is given), replacing the trainer's loggers once the run directory is known.
    """

    def __init__(
        self,
        experiment_name: str,
        runs_root: str,
        dataset_name: str | None,
        save_top_k: int,
        save_weights_only: bool,
        exist_ok: bool,
        tensorboard: bool,
    ) -> None:
        self.experiment_name = experiment_name
        self.tensorboard = tensorboard
        self.runs_root = runs_root
        self.dataset_name = dataset_name
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.exist_ok = exist_ok
        self.run_dir: Path | None = None
        self.entries: list[dict[str, Any]] = []
        self.created_at: str | None = None
        self.extra_metadata: dict[str, Any] = {}

    # -- helpers --------------------------------------------------------------------------------------------------
    @staticmethod
    def _data_hparams(trainer: L.Trainer) -> dict[str, Any]:
        dm = trainer.datamodule
        return dict(dm.hparams) if dm is not None else {}

    def _dataset_name(self, data: dict[str, Any]) -> str:
        if self.dataset_name:
            return self.dataset_name
        train = data.get("train_csv")
        return Path(train).stem if train else "data"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # The directory is checked and created in on_fit_start: only then is a resumed checkpoint known.

        views = typed(ViewSettings, self._data_hparams(trainer))
        run_dir = run_dir_path(
            self.runs_root,
            self.experiment_name,
            pl_module.hparams.stage,
            views.crop_strategy,
            pl_module.model_settings.resampler_type,
        ).resolve()
        self.run_dir = run_dir
        logger.info("run directory: %s", run_dir)
        if self.tensorboard:
            from panollava.callbacks.sample_logger import fit_tensorboard_logger

            trainer.loggers = [fit_tensorboard_logger(run_dir)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_dir is None or not trainer.is_global_zero:
            return
        run_dir = self.run_dir
        resumed = trainer.ckpt_path
        resuming_here = resumed is not None and Path(resumed).resolve().parent == run_dir
        existing = sorted(p.name for p in run_dir.glob("*.ckpt")) if run_dir.is_dir() else []
        if existing and not (self.exist_ok or resuming_here):
            raise InvalidInputError(
                f"run directory '{run_dir}' already holds checkpoints ({', '.join(existing[:5])}); choose another "
                f"--experiment_name, continue the run with --ckpt_path '{run_dir / 'last.ckpt'}', or pass "
                "--exist_ok true to add to it"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        self.entries = self._history(run_dir)
        if self.entries:
            best = _best(self.entries)
            logger.info(
                "continuing run directory '%s' (%s): %d earlier checkpoint(s) kept in the history, best so far %s",
                run_dir, f"resumed from {Path(resumed).name}" if resumed else "--exist_ok", len(self.entries),
                best["file"] if best else "none (no finite val/loss)",
            )

    def _history(self, run_dir: Path) -> list[dict[str, Any]]:
        """Checkpoint entries of earlier segments: the metadata's list, then unlisted convention-named files."""

        entries: list[dict[str, Any]] = []
        meta_path = run_dir / METADATA_FILENAME
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                listed = (meta.get("checkpoints") or {}).get("all") or []
                self.created_at = self.created_at or meta.get("created_at")
            except (ValueError, AttributeError, OSError) as exc:
                logger.warning(
                    "cannot read the checkpoint history from '%s' (%s): rebuilding it from the file names", meta_path, exc
                )
                listed = []
            for item in listed:
                if not isinstance(item, dict) or not isinstance(item.get("file"), str):
                    continue
                if not (run_dir / item["file"]).is_file() or (run_dir / item["file"]).is_symlink():
                    logger.warning("checkpoint history: '%s' is listed in %s but gone; dropped", item["file"], meta_path)
                    continue
                entries.append(_entry(item["file"], item.get("epoch"), item.get("step"), item.get("val_loss"),
                                      item.get("val_loss_note")))
        known = {e["file"] for e in entries}
        for path in sorted(run_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime):
            parsed = parse_checkpoint_filename(path.name)
            if path.is_symlink() or path.name in known or parsed is None:
                continue
            logger.warning("checkpoint history: '%s' is not in the metadata; val/loss read from its name", path.name)
            entries.append(_entry(path.name, parsed["epoch"], None, parsed["val_loss"], "read from the file name"))
        return entries

    def _metadata(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        hp = pl_module.hparams
        data = self._data_hparams(trainer)
        views = typed(ViewSettings, data)
        prep = pl_module.image_preprocessing(views.use_vision_processor)
        model_config = dict(hp.model_config)
        model_config["image_size"] = list(prep.image_size)
        model_config.setdefault("tokenizer_name", model_config["language_model_name"])
        model_config["image_token"] = pl_module.model_settings.image_token
        model_config["lora"] = dict(hp.lora) if hp.lora is not None else None
        model_config["train_vision"] = "vision_tower" in pl_module.trainable_parts
        model_config["vision_hidden_size"] = int(pl_module.vlm.vision_tower.config.hidden_size)
        model_config["lm_hidden_size"] = int(pl_module.vlm.projector.out_features)
        model_config["tokens_per_view"] = int(pl_module.vlm.tokens_per_view(prep.image_size))
        def _abs(p: str | None) -> str | None:
            return str(Path(p).resolve()) if p else None

        training_config = {
            "crop_strategy": views.crop_strategy,
            "fov_deg": float(views.fov_deg),
            "overlap_ratio": float(views.overlap_ratio),
            "num_views": int(views.num_views),
            "use_vision_processor": bool(views.use_vision_processor),
            "image_mean": list(prep.mean),
            "image_std": list(prep.std),
            "learning_rate": float(hp.learning_rate),
            "weight_decay": float(hp.weight_decay),
            "warmup_steps": int(hp.warmup_steps),
            "batch_size": int(data.get("batch_size", 0)),
            "max_epochs": trainer.max_epochs,
            "seed": _seed(),
            "trainable_parts": list(pl_module.trainable_parts),
            "max_answer_tokens": int(hp.max_answer_tokens),
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "image_blind": bool(views.image_blind),
        }
        dataset = {
            "train_csv": _abs(data.get("train_csv")),
            "val_csv": _abs(data.get("val_csv")),
            "test_csv": _abs(data.get("test_csv")),
            "dataset_name": self._dataset_name(data),
            "image_root": _abs(data.get("image_root")),
        }
        best = _best(self.entries)
        last = self.entries[-1] if self.entries else None
        checkpoints = {
            "best": {k: best[k] for k in ("file", "val_loss", "epoch")} if best else None,
            "last": {k: last[k] for k in ("file", "val_loss", "epoch")} if last else None,
            "all": [dict(e) for e in self.entries],
        }
        info = {
            "saved": "resampler, projector" + (", vision_tower" if "vision_tower" in pl_module.trainable_parts else "")
            + (", language_model" if "language_model" in pl_module.trainable_parts else "")
            + (", LoRA tensors" if hp.lora is not None else ""),
            "from_pretrained": pl_module.pretrained_sources(),
            "weights_only": self.save_weights_only,
        }
        meta = build_metadata(
            experiment_name=self.experiment_name,
            stage=hp.stage,
            model_config=model_config,
            training_config=training_config,
            prompt={k: hp.prompt.get(k) for k in ("template", "system_prompt", "enable_thinking")},
            dataset=dataset,
            checkpoints=checkpoints,
            checkpoint_contents=info,
            lora_weights="lora_weights" if hp.lora is not None else None,
            created_at=self.created_at,
            extra={"generation": dict(hp.generation), **self.extra_metadata},
        )
        self.created_at = meta["created_at"]
        return meta

    def _save_adapter(self, pl_module: L.LightningModule, for_file: str) -> None:
        from peft import PeftModel

        lm = pl_module.vlm.language_model
        if not isinstance(lm, PeftModel):
            return
        target = self.run_dir / "lora_weights"
        staging = Path(tempfile.mkdtemp(prefix=".lora_weights-", dir=self.run_dir))
        lm.save_pretrained(str(staging), safe_serialization=True)
        (staging / "checkpoint.txt").write_text(for_file + "\n")
        old = None
        if target.exists():
            old = self.run_dir / f".lora_weights-old-{os.getpid()}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _validation_loss(trainer: L.Trainer) -> float | None:
        """This epoch's ``val/loss`` as logged, or None when validation logged none."""
        metric = trainer.callback_metrics.get("val/loss")
        return float(metric) if metric is not None else None

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.run_dir is None:
            return

        metric = self._validation_loss(trainer)
        val_loss = metric if metric is not None else float("nan")
        note = None
        if metric is None:
            note = "validation logged no val/loss this epoch"
        elif not math.isfinite(val_loss):
            note = f"val/loss was {val_loss} (diverged training or an empty validation set)"
        data = self._data_hparams(trainer)
        model = pl_module.model_settings
        name = checkpoint_filename(
            model.vision_name,
            model.resampler_type,
            typed(ViewSettings, data).crop_strategy,
            self._dataset_name(data),
            trainer.current_epoch,
            val_loss,
        )
        path = self.run_dir / name
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        if not trainer.is_global_zero:
            return
        self.entries = [e for e in self.entries if e["file"] != name]
        self.entries.append(_entry(name, trainer.current_epoch, trainer.global_step, val_loss, note))
        if note is not None:
            logger.warning("epoch %d: %s; recorded as val_loss null, never chosen as best", trainer.current_epoch, note)
        scored = [e for e in self.entries if e["val_loss"] is not None]
        best = _best(self.entries)
        update_link(self.run_dir / LAST_LINK, path)
        if best is not None:
            update_link(self.run_dir / BEST_LINK, self.run_dir / best["file"])
        elif (self.run_dir / BEST_LINK).is_symlink():
            (self.run_dir / BEST_LINK).unlink()
        adapter_for = best["file"] if best is not None else name  # the adapter evaluation loads beside the link
        if adapter_for == name:
            self._save_adapter(pl_module, name)
        elif _adapter_checkpoint(self.run_dir) != adapter_for:
            logger.warning(
                "lora_weights/ in '%s' is not the adapter of the best checkpoint %s (which this process no longer "
                "holds); evaluation loads the LoRA tensors stored in the checkpoint itself", self.run_dir, adapter_for,
            )
        if self.save_top_k >= 0:
            keep = {e["file"] for e in sorted(scored, key=lambda e: e["val_loss"])[: self.save_top_k]}
            keep |= {name} | ({best["file"]} if best is not None else set())
            for e in [e for e in self.entries if e["file"] not in keep]:
                (self.run_dir / e["file"]).unlink(missing_ok=True)
                self.entries.remove(e)
        write_metadata(self.run_dir / METADATA_FILENAME, self._metadata(trainer, pl_module))
        logger.info("saved %s (val/loss %.4f; best %s)", name, val_loss, best["file"] if best else "none yet")


def _entry(file: str, epoch: Any, step: Any, val_loss: Any, note: str | None = None) -> dict[str, Any]:
    """A checkpoint-list entry; a missing or non-finite loss becomes ``None`` with a note (JSON has no NaN)."""
    finite = isinstance(val_loss, (int, float)) and not isinstance(val_loss, bool) and math.isfinite(val_loss)
    entry: dict[str, Any] = {"file": file, "epoch": epoch, "step": step, "val_loss": float(val_loss) if finite else None}
    if not finite:
        entry["val_loss_note"] = note or f"val/loss was {val_loss!r}"
    elif note is not None:
        entry["val_loss_note"] = note
    return entry


def _best(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The entry with the lowest finite validation loss (the first of equals), or None."""
    return min((e for e in entries if e["val_loss"] is not None), key=lambda e: e["val_loss"], default=None)


def _adapter_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint file ``lora_weights/checkpoint.txt`` says the adapter belongs to."""
    try:
        return (run_dir / "lora_weights" / "checkpoint.txt").read_text().strip() or None
    except OSError:
        return None


def _seed() -> int | None:
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else None
