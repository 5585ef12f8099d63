"""``PanoDataModule``: caption CSVs → batches of panorama views.

Each item decodes its panorama once and cuts all of its views in one call (``render_views``), normalised with the
vision processor's mean/std — the same code for training, validation, test and predict. The view size and
mean/std come from the model (``PanoLLaVAModule.image_preprocessing``) so data and model cannot disagree.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from panollava.data.dataset import (
    REFERENCE_MODES,
    CaptionSample,
    group_samples,
    read_caption_csv,
    training_samples,
)
from panollava.data.panorama_batches import PanoramaBatches, attach_views, identity_collate
from panollava.errors import InvalidInputError
from panollava.evaluation.sharding import rank_batches
from panollava.schema import (
    CropStrategy,
    EvaluationOptions,
    FovDeg,
    PositiveInt,
    Ratio,
    ReferenceMode,
    Triple,
    ViewSettings,
    args_doc,
    to_plain,
)

_VIEWS = ViewSettings()

logger = logging.getLogger(__name__)


class PanoCaptionDataset(Dataset):
    """Samples → ``{"sample_id", "pixel_values" (V, 3, H, W), "query", "references", "image"}``.

    Args:
        samples: The caption samples.
        transform: The model's panorama transform (``CaptioningModule.panorama_transform``: for our family a
            :class:`panollava.families.base.StackedViews`, the code evaluation uses).
        view_cache_mb: Keep up to this many MB of rendered views per process, keyed by image (a panorama usually
            has several queries, so its views are cut once); 0 disables the cache.
    """

    def __init__(self, samples: Sequence[CaptionSample], transform, view_cache_mb: float = 0.0) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.view_cache_bytes = int(view_cache_mb * 2**20)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0

    def views(self, image_path: str) -> torch.Tensor:
        """The transformed views of one panorama, from the cache when present."""
        from panollava.data.images import load_panorama

        views = self._cache.get(image_path)
        if views is not None:
            self._cache.move_to_end(image_path)
            return views
        views = self.transform(load_panorama(image_path))
        size = views.numel() * views.element_size()
        if size <= self.view_cache_bytes:
            self._cache[image_path] = views
            self._cached_bytes += size
            while self._cached_bytes > self.view_cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
        return views

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        views = self.views(s.image_path)
        return {
            "index": index,
            "sample_id": s.sample_id,
            "pixel_values": views,
            "query": s.query,
            "references": list(s.references),
            "image": s.url,
            "image_path": s.image_path,
        }


def collate_samples(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack views to (B, V, 3, H, W); keep the strings as lists (ids travel with every batch)."""
    return {
        "index": [it["index"] for it in items],
        "sample_id": [it["sample_id"] for it in items],
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "query": [it["query"] for it in items],
        "references": [it["references"] for it in items],
        "image": [it["image"] for it in items],
        "image_path": [it["image_path"] for it in items],
    }


class PanoDataModule(L.LightningDataModule):
    """Caption CSVs with panoramas.

    Args:
        train_csv: Training CSV (``url,query,annotation``); one example per row.
        val_csv: Validation CSV; the validation loss picks the best checkpoint.
        test_csv: Test CSV; rows sharing (url, query) form one sample with several references.
        predict_csv: CSV for ``predict`` (``annotation`` optional).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation/test/predict (default: batch_size).
        num_workers: DataLoader worker processes.
        max_samples: Use only the first N samples of each split (quick runs); None uses all.
        view_cache_mb: Training/validation: per-process cache of rendered views, in MB; 0 disables.
        view_device: Where evaluation cuts the views: ``loader`` (DataLoader workers, CPU), ``model`` (workers only
            decode the JPEG into a uint8 tensor, pinned; the views are cut on the model's device after the batch
            is uploaded) or ``auto`` (``model`` on a GPU, ``loader`` otherwise).
    """
    # The view/input arguments (crop_strategy, fov_deg, ..., image_root) and reference_mode are documented where
    # they are declared, in panollava.schema; their docs are appended to the Args above (they become --help).

    def __init__(
        self,
        train_csv: str | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        predict_csv: str | None = None,
        image_root: Optional[str] = _VIEWS.image_root,
        crop_strategy: CropStrategy = _VIEWS.crop_strategy,
        fov_deg: FovDeg = _VIEWS.fov_deg,
        overlap_ratio: Ratio = _VIEWS.overlap_ratio,
        num_views: PositiveInt = _VIEWS.num_views,
        use_vision_processor: bool = _VIEWS.use_vision_processor,
        image_mean: Optional[Triple] = _VIEWS.image_mean,
        image_std: Optional[Triple] = _VIEWS.image_std,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = EvaluationOptions.num_workers,
        max_samples: int | None = None,
        reference_mode: ReferenceMode = EvaluationOptions.reference_mode,
        image_blind: bool = _VIEWS.image_blind,
        view_cache_mb: float = 256.0,
        view_device: Literal["auto", "loader", "model"] = "auto",
    ) -> None:
        super().__init__()
        if reference_mode not in REFERENCE_MODES:
            raise InvalidInputError(f"--data.reference_mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
        if max_samples is not None and max_samples < 1:
            raise InvalidInputError(f"max_samples must be a positive number, got {max_samples}")
        self.save_hyperparameters({k: to_plain(v) for k, v in locals().items() if k not in ("self", "__class__")})
        self.datasets: dict[str, PanoCaptionDataset] = {}
        # Set by the evaluation writer before the loaders are built: samples a resumed run already finished.
        self.skip_sample_ids: dict[str, set[str]] = {}
        self.eval_batches: dict[str, list[list[int]]] = {}

    # -- helpers --------------------------------------------------------------------------------------------------
    def view_settings(self) -> ViewSettings:
        """The view settings of this data module (crop strategy, fov, overlap, normalisation, image-blind)."""
        hp = self.hparams
        return ViewSettings(**{f.name: hp[f.name] for f in fields(ViewSettings) if f.name in hp})

    def panorama_transform(self):
        """The attached model's transform of one decoded panorama (``CaptioningModule.panorama_transform``): the
        model's family decides what it needs of a panorama; this module only says how views are asked for."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "panorama_transform"):
            raise RuntimeError("PanoDataModule needs a CaptioningModule attached through the Trainer")
        return module.panorama_transform(self.view_settings())

    def _dataset(self, csv: str | None, split: str) -> PanoCaptionDataset:
        if csv is None:
            raise InvalidInputError(f"no {split} CSV: set --data.{split}_csv (or --csv_input for test/predict)")
        require = split in ("train", "val")
        rows = read_caption_csv(csv, self.hparams.image_root, require_annotation=require)
        if split in ("train", "val"):
            samples = training_samples(rows)
        else:
            samples = group_samples(rows, self.hparams.reference_mode)
        if self.hparams.max_samples is not None:
            samples = samples[: self.hparams.max_samples]
        transform = self.panorama_transform()
        logger.info("%s: %d samples from %s (%s)", split, len(samples), Path(csv).resolve(),
                    self.hparams.crop_strategy)
        return PanoCaptionDataset(samples, transform, self.hparams.view_cache_mb)

    # -- Lightning hooks ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        hp = self.hparams
        wanted = {
            "fit": [("train", hp.train_csv), ("val", hp.val_csv)],
            "validate": [("val", hp.val_csv)],
            "test": [("test", hp.test_csv)],
            "predict": [("predict", hp.predict_csv)],
        }[stage]
        for split, csv in wanted:
            if split == "val" and csv is None and stage == "fit":
                raise InvalidInputError(
                    "training needs a validation CSV (--data.val_csv): its loss chooses best.ckpt"
                )
            if split not in self.datasets:
                self.datasets[split] = self._dataset(csv, split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        bs = hp.batch_size if split == "train" else (hp.eval_batch_size or hp.batch_size)
        return DataLoader(
            self.datasets[split],
            batch_size=bs,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            collate_fn=collate_samples,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def _eval_loader(self, split: str) -> DataLoader:
        """This process's share of an evaluation split: whole panoramas, no padding, done samples skipped.

        The batches come from :func:`panollava.evaluation.sharding.rank_batches` (rank and world size from the
        trainer; ``skip_sample_ids``, set by the evaluation writer when it resumes, left out first).
        """
        hp = self.hparams
        dataset = self.datasets[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        skip = self.skip_sample_ids.get(split, set())
        done = [i for i, s in enumerate(dataset.samples) if s.sample_id in skip]
        batches = rank_batches([s.image_path for s in dataset.samples], rank, world,
                               hp.eval_batch_size or hp.batch_size, skip=done)
        self.eval_batches[split] = batches
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        on_device = hp.view_device == "model" or (hp.view_device == "auto" and on_gpu)
        batches_ds = PanoramaBatches(dataset.samples, batches, dataset.transform,
                                     views_on_device=on_device and bool(getattr(dataset.transform, "on_device", False)))
        logger.info("%s: rank %d of %d evaluates %d samples in %d batches", split, rank, world,
                    batches_ds.num_samples, len(batches))
        return DataLoader(
            batches_ds,
            batch_size=None,
            num_workers=min(hp.num_workers, max(1, len(batches))) if hp.num_workers else 0,
            collate_fn=identity_collate,
            pin_memory=bool(trainer is not None and trainer.strategy.root_device.type == "cuda"),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Evaluation batches that carry decoded panoramas (``view_device`` model) get their views cut here, on
        the device the batch was uploaded to."""
        if isinstance(batch, dict) and "panoramas" in batch:
            attach_views(batch)
        return batch

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


PanoDataModule.__doc__ = "\n".join([  # one declaration of each input argument's doc: panollava.schema
    PanoDataModule.__doc__.rstrip(),
    args_doc(ViewSettings, ("image_root", "crop_strategy", "fov_deg", "overlap_ratio", "num_views",
                            "use_vision_processor", "image_mean", "image_std", "image_blind")),
    args_doc(EvaluationOptions, ("reference_mode",)),
    "    ",
])
