"""Evaluation batches: whole panoramas per batch, each panorama decoded and cut into views once.

:class:`PanoramaBatches` is an ``IterableDataset`` whose items are whole batches (the list of dataset indices comes
from :func:`panollava.evaluation.sharding.rank_batches`), so Lightning never wraps it in a padding
``DistributedSampler``: each rank iterates exactly its own batches. DataLoader workers take batches round robin
(batch ``i`` → worker ``i % num_workers``), which keeps the batch order fixed.

A batch that cannot be built (an unreadable image, say) is not raised in the worker: it comes back as
``{"error": exc, ...}`` so that the rank can report it to the others at the end instead of leaving them waiting in
a collective. A rank with nothing to do yields one empty batch, so Lightning still runs its epoch hooks (and their
collectives) there.

Batch layout (``pixel_values`` holds each panorama once)::

    index (B) · sample_id (B) · query (B) · references (B) · image (B) · image_path (B)
    pixel_values (P, V, 3, H, W) · panorama_index (B,) long · panorama_key (P)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from panollava.data.dataset import CaptionSample
from panollava.data.views import normalize_views, render_views

logger = logging.getLogger(__name__)


def identity_collate(item: Any) -> Any:
    """DataLoader ``collate_fn`` for datasets whose items are already batches (picklable, for workers)."""
    return item


class TransformBox:
    """Carries a panorama transform through Lightning's device transfer untouched (not a tensor collection)."""

    def __init__(self, transform) -> None:
        self.transform = transform


def cut_views(panorama: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """The normalised views (V, 3, H, W) of one decoded panorama (uint8 (3, H, W)), on its device; zeros when the
    spec is image-blind. The one code path for views cut in loader workers and on the model's device."""
    views = normalize_views(render_views(panorama, spec["config"]), spec["mean"], spec["std"])
    return torch.zeros_like(views) if spec["image_blind"] else views


def attach_views(batch: dict[str, Any]) -> dict[str, Any]:
    """Applies the panorama transform of a ``views_on_device`` batch where its panoramas are (after the upload):
    sets ``pixel_values`` and drops the decoded panoramas. A failure becomes ``batch["error"]``, reported by the
    rank like any other (see the module docstring)."""
    panoramas = batch.pop("panoramas")
    transform = batch.pop("transform").transform
    if batch.get("error") is None:
        try:
            batch["pixel_values"] = transform.collate([transform(p) for p in panoramas])
        except Exception as exc:  # noqa: BLE001 - reported by the rank at the end of the epoch
            batch["error"] = exc
    return batch


def empty_batch() -> dict[str, Any]:
    """A batch with no samples (a rank with nothing to evaluate)."""
    return {"index": [], "sample_id": [], "query": [], "references": [], "image": [], "image_path": [],
            "pixel_values": torch.zeros(0), "panorama_index": torch.zeros(0, dtype=torch.long), "panorama_key": []}


class PanoramaBatches(IterableDataset):
    """Batches of evaluation samples with each panorama decoded and transformed once.

    Args:
        samples: The dataset's samples (indexed by dataset index).
        batches: Dataset indices of each batch this process evaluates, in order.
        transform: The model's panorama transform (``panollava.families.base.PanoramaTransform``).
        views_on_device: Only decode each panorama (uint8 ``panoramas``, one per unique image) and leave the
            transform to :func:`attach_views` after the batch reached the model's device (a GPU projects far faster
            than the loader's CPU).
    """

    def __init__(
        self,
        samples: Sequence[CaptionSample],
        batches: Sequence[Sequence[int]],
        transform,
        views_on_device: bool = False,
    ) -> None:
        super().__init__()
        self.samples = samples
        self.batches = [list(b) for b in batches]
        self.transform = transform
        self.views_on_device = views_on_device
        self._last: tuple[str, Any] | None = None

    @property
    def num_samples(self) -> int:
        """Samples in this process's batches."""
        return sum(len(b) for b in self.batches)

    def __len__(self) -> int:
        return max(1, len(self.batches))

    def views(self, image_path: str) -> Any:
        """The transformed panorama (for our family: normalised views (V, 3, H, W)).

        The last panorama's views are kept: a panorama with more queries than a batch holds continues in the next
        batch, which this worker builds next when it is the only one.
        """
        from panollava.data.images import load_panorama

        if self._last is not None and self._last[0] == image_path:
            return self._last[1]
        views = self.transform(load_panorama(image_path))
        self._last = (image_path, views)
        return views

    def build(self, indices: Sequence[int]) -> dict[str, Any]:
        """The batch of the given dataset indices (see the module docstring)."""
        samples = [self.samples[i] for i in indices]
        batch: dict[str, Any] = {
            "index": list(indices),
            "sample_id": [s.sample_id for s in samples],
            "query": [s.query for s in samples],
            "references": [list(s.references) for s in samples],
            "image": [s.url for s in samples],
            "image_path": [s.image_path for s in samples],
        }
        try:
            keys: list[str] = []
            rows: dict[str, int] = {}
            for s in samples:
                if s.image_path not in rows:
                    rows[s.image_path] = len(keys)
                    keys.append(s.image_path)
            if self.views_on_device:
                from panollava.data.images import load_panorama

                batch["panoramas"] = [load_panorama(key) for key in keys]
                batch["transform"] = TransformBox(self.transform)
            else:
                batch["pixel_values"] = self.transform.collate([self.views(key) for key in keys])
            batch["panorama_index"] = torch.tensor([rows[s.image_path] for s in samples], dtype=torch.long)
            batch["panorama_key"] = keys
        except Exception as exc:  # noqa: BLE001 - reported by the rank at the end of the epoch, never swallowed
            batch["error"] = exc
        return batch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if not self.batches:
            if worker == 0:
                yield empty_batch()
            return
        for i, indices in enumerate(self.batches):
            if i % workers == worker:
                yield self.build(indices)
