"""Callbacks that write evaluation outputs and log samples (shared by training and test)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

logger = logging.getLogger(__name__)


class EvaluationWriter(Callback):
    """On rank 0, after ``test``/``predict``: ``predictions.jsonl``, ``predictions.csv`` and (test) ``metrics.json``.

    Args:
        output_dir: Where to write (created). Never the run directory unless the user passes it.
        provenance: Extra top-level entries for ``metrics.json`` (checkpoint, settings, dataset, versions).
    """

    def __init__(self, output_dir: str, provenance: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.provenance = dict(provenance or {})
        self.metrics: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from panollava.report import attach_scores, write_json_atomic, write_predictions

        scores = pl_module.test_scores
        self.records = attach_scores(pl_module.test_records, scores.per_sample if scores is not None else None)
        metrics = scores.to_metrics_json() if scores is not None else {}
        metrics["num_samples"] = len(self.records)
        metrics.update(self.provenance)
        self.metrics = metrics
        if not trainer.is_global_zero:
            return
        write_predictions(self.output_dir, self.records)
        write_json_atomic(self.output_dir / "metrics.json", metrics)
        logger.info("wrote %d predictions and metrics.json to %s", len(self.records), self.output_dir)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from panollava.distributed import gather_records
        from panollava.report import write_json_atomic, write_predictions

        local = [rec for batch in (trainer.predict_loop.predictions or []) for rec in batch]
        self.records = [
            {k: r[k] for k in ("sample_id", "image", "query", "prediction", "references")} | {"index": r["index"]}
            for r in gather_records(local)
        ]
        for r in self.records:
            r.pop("index", None)
        if trainer.is_global_zero:
            write_predictions(self.output_dir, self.records)
            write_json_atomic(self.output_dir / "predict_info.json", {"num_samples": len(self.records), **self.provenance})


class SampleLogger(Callback):
    """Prints prediction/reference pairs: every ``log_interval`` test batches (at most ``log_max_samples``), and
    after each validation epoch in training (the first batch's first samples, generated on the spot).

    Args:
        log_interval: Log every N-th test batch.
        log_max_samples: Stop after this many logged pairs (test), or log this many per validation epoch (fit).
    """

    def __init__(self, log_interval: int = 10, log_max_samples: int = 16) -> None:
        self.log_interval = max(1, int(log_interval))
        self.log_max_samples = int(log_max_samples)
        self.logged = 0
        self._val_batch: dict[str, Any] | None = None

    @staticmethod
    def _show(rec: dict[str, Any]) -> str:
        refs = rec.get("references") or []
        ref = refs[0] if refs else "(no reference)"
        more = f" (+{len(refs) - 1} more)" if len(refs) > 1 else ""
        return f"  [{rec['sample_id']}] {rec['query']!r}\n    pred: {rec['prediction']}\n    ref:  {ref}{more}"

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logged = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx % self.log_interval or self.logged >= self.log_max_samples or not outputs:
            return
        take = outputs[: self.log_max_samples - self.logged]
        self.logged += len(take)
        rank_zero_info(f"samples (test batch {batch_idx}):\n" + "\n".join(self._show(r) for r in take))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            n = self.log_max_samples
            self._val_batch = {k: (v[:n] if hasattr(v, "__getitem__") else v) for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_batch is None or trainer.sanity_checking:
            return
        batch, self._val_batch = self._val_batch, None
        predictions = pl_module.generate_captions(batch)
        records = pl_module._records(batch, predictions)
        rank_zero_info(f"samples (epoch {trainer.current_epoch}):\n" + "\n".join(self._show(r) for r in records))
