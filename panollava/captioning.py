"""The Lightning side of the model-family seam: evaluation steps that serve any
:class:`~panollava.families.base.CaptionModel`.

:class:`CaptioningModule` owns what ``test`` and ``predict`` do per batch (captions → records; a failure kept for
the evaluation writer so every rank learns of it) and hands the data module the family's panorama transform. It
never knows which family it serves. :class:`panollava.module.PanoLLaVAModule` (our family, which also trains)
extends it; :class:`FamilyModule` wraps a ready ``CaptionModel`` of another family for evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

logger = logging.getLogger(__name__)


class CaptioningModule(L.LightningModule):
    """Evaluation steps over a :class:`~panollava.families.base.CaptionModel` (``caption_model``)."""

    def __init__(self) -> None:
        super().__init__()
        self.eval_error: Exception | None = None
        self.test_scores = None  # CaptionScores of the last test, set by EvaluationWriter

    @property
    def caption_model(self):
        """The family's :class:`~panollava.families.base.CaptionModel` (built by the subclass)."""
        raise NotImplementedError

    def panorama_transform(self, view_settings):
        """What the data module applies to each decoded panorama (see ``CaptionModel.panorama_transform``)."""
        return self.caption_model.panorama_transform(view_settings)

    def describe_decoding(self) -> dict[str, Any]:
        """The decoding that ran, for ``metrics.json``."""
        return self.caption_model.describe_decoding()

    @torch.no_grad()
    def generate_captions(self, batch: dict[str, Any]) -> list[str]:
        """Captions for a batch, one per sample."""
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        return self.caption_model.generate(batch)

    @staticmethod
    def _records(batch: dict[str, Any], predictions: Sequence[str]) -> list[dict[str, Any]]:
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

    def _reset_caption_model(self) -> None:
        """Nothing carried over between evaluations (features of a continuing panorama, a kept KV cache)."""

    def on_test_epoch_start(self) -> None:
        self.eval_error = None
        self.test_scores = None
        self._reset_caption_model()

    def on_predict_epoch_start(self) -> None:
        self.eval_error = None
        self._reset_caption_model()

    def on_test_epoch_end(self) -> None:
        self._reset_caption_model()

    def on_predict_epoch_end(self) -> None:
        self._reset_caption_model()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return self._evaluation_step(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return self._evaluation_step(batch)


class FamilyModule(CaptioningModule):
    """Evaluation of a ready :class:`~panollava.families.base.CaptionModel` (families other than ours).

    Args:
        caption_model: The family's model, its weights restored.
    """

    def __init__(self, caption_model) -> None:
        super().__init__()
        self._caption_model = caption_model
        self.family_weights = caption_model.module  # a child module: Lightning moves it to the device

    @property
    def caption_model(self):
        return self._caption_model

    def _reset_caption_model(self) -> None:
        self._caption_model.reset()
