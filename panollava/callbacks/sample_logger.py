"""``SampleLogger``: generated captions beside their panorama views and references, in ``fit`` and ``test``.

One callback serves both stages:

- ``fit`` (validation): after each validation epoch (not the sanity check) it generates captions for the first
  ``val_samples`` samples of the first validation batch with the module's ``generate_captions`` — a few samples,
  so it costs little — and logs them at the trainer's global step.
- ``test``: every ``log_interval``-th batch it logs that batch's records (the captions ``test_step`` already
  generated), at most ``log_max_samples`` in all.

It writes to every configured Lightning logger it knows, with that logger's own API (no hand-written file
formats):

- ``TensorBoardLogger``: ``add_text`` of a markdown table (image, query, prediction, references) under
  ``<stage>/samples``, and ``add_image`` of each sample's views as one horizontal strip under
  ``<stage>/views/<n>`` (validation: position in the batch, stable across epochs) or ``<stage>/views/<sample_id>``
  (test);
- ``CSVLogger``: rows appended to ``samples.csv`` in the logger's ``log_dir`` (beside its ``metrics.csv``);
- ``WandbLogger``: a ``wandb.Table`` (views strip as ``wandb.Image``) via ``log_table``.

Other loggers are skipped with one INFO line. With ``console=True`` it also prints the pairs (rank 0), as the
callback always did. Only rank 0 writes; in DDP test runs the samples are those of rank 0's shard.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from panollava.schema import ViewSettings, typed

logger = logging.getLogger(__name__)

DEFAULT_VAL_SAMPLES = 4
SAMPLES_CSV = "samples.csv"
SAMPLES_CSV_COLUMNS = ("stage", "epoch", "step", "sample_id", "index", "image", "query", "prediction", "references")
FIT_LOG_DIR = "tensorboard"


@dataclass(frozen=True)
class LoggedSample:
    """One generated caption with what it is judged against.

    Attributes:
        sample_id: The sample's id (stable across runs).
        index: Dataset index of the sample.
        image: The panorama's url as written in the CSV.
        query: The query asked.
        prediction: The generated caption.
        references: Every reference caption of the sample.
        strip: The views the model saw, de-normalised to [0, 1], side by side: (3, H, V·W); None when the batch
            held no views for it.
    """

    sample_id: str
    index: int
    image: str
    query: str
    prediction: str
    references: tuple[str, ...]
    strip: torch.Tensor | None


def views_strip(views: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """The views of one sample as one image: de-normalised, clamped to [0, 1], placed left to right.

    Args:
        views: (V, 3, H, W), normalised with ``mean``/``std`` (or already in [0, 1] when both are None).
        mean: Per-channel mean the views were normalised with.
        std: Per-channel std the views were normalised with.

    Returns:
        (3, H, V·W) float32 in [0, 1].
    """
    if views.dim() != 4 or views.shape[1] != 3:
        raise ValueError(f"views must be (V, 3, H, W), got shape {tuple(views.shape)}")
    x = views.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(list(std), dtype=x.dtype).view(1, 3, 1, 1) + torch.tensor(list(mean), dtype=x.dtype).view(1, 3, 1, 1)
    x = x.clamp(0.0, 1.0)
    v, c, h, w = x.shape
    return x.permute(1, 2, 0, 3).reshape(c, h, v * w).contiguous()


def _cell(text: str) -> str:
    """One markdown table cell: pipes escaped, line breaks flattened."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def samples_markdown(samples: Sequence[LoggedSample]) -> str:
    """A markdown table of samples (TensorBoard's text plugin renders it): image, query, prediction, references.

    References of one sample are separated by ``<br>``; pipes in any text are escaped.
    """
    lines = ["| sample | image | query | prediction | references |", "|---|---|---|---|---|"]
    for s in samples:
        refs = "<br>".join(_cell(r) for r in s.references) or "(none)"
        lines.append(f"| {_cell(s.sample_id)} | {_cell(s.image)} | {_cell(s.query)} | {_cell(s.prediction)} | {refs} |")
    return "\n".join(lines)


def _console_lines(samples: Sequence[LoggedSample]) -> str:
    out = []
    for s in samples:
        ref = s.references[0] if s.references else "(no reference)"
        more = f" (+{len(s.references) - 1} more)" if len(s.references) > 1 else ""
        out.append(f"  [{s.sample_id}] {s.query!r}\n    pred: {s.prediction}\n    ref:  {ref}{more}")
    return "\n".join(out)


def _sample_views(batch: dict[str, Any], row: int) -> torch.Tensor | None:
    """(V, 3, H, W) views of batch sample ``row``: evaluation batches hold each panorama once (``panorama_index``)."""
    pixel_values = batch.get("pixel_values")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
        return None
    panorama_index = batch.get("panorama_index")
    if panorama_index is not None:
        return pixel_values[int(panorama_index[row])]
    return pixel_values[row]


def _take(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a training/validation batch (one views tensor per sample)."""
    if batch.get("panorama_index") is not None:
        raise ValueError("validation batches carry one views tensor per sample; got an evaluation batch")
    return {k: (v[:n] if isinstance(v, (list, tuple, torch.Tensor)) else v) for k, v in batch.items()}


class SampleLogger(Callback):
    """Logs generated captions with their views and references to the trainer's loggers (see the module doc).

    Args:
        log_interval: Test: log every N-th test batch.
        log_max_samples: Test: stop after this many logged samples.
        val_samples: Fit: samples generated and logged after each validation epoch (0: none).
        console: Also print the pairs (rank 0).
    """

    def __init__(
        self,
        log_interval: int,
        log_max_samples: int,
        val_samples: int = DEFAULT_VAL_SAMPLES,
        console: bool = True,
    ) -> None:
        if log_interval < 1:
            raise ValueError(f"log_interval must be >= 1 (log every N-th test batch), got {log_interval}")
        if log_max_samples < 0 or val_samples < 0:
            raise ValueError(f"log_max_samples and val_samples must be >= 0, got {log_max_samples}, {val_samples}")
        self.log_interval = int(log_interval)
        self.log_max_samples = int(log_max_samples)
        self.val_samples = int(val_samples)
        self.console = bool(console)
        self.logged = 0
        self._val_batch: dict[str, Any] | None = None
        self._normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._skipped_loggers: set[str] = set()

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self.val_samples and not trainer.sanity_checking:
            if trainer.is_global_zero:
                self._val_batch = _take(batch, self.val_samples)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_batch is None or trainer.sanity_checking:
            return
        batch, self._val_batch = self._val_batch, None
        # Sampled decoding seeds the global generator: fork it, so logging samples never changes training.
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            predictions = pl_module.generate_captions(batch)
        samples = [self._sample(trainer, pl_module, batch, i, predictions[i]) for i in range(len(predictions))]
        self._emit(trainer, "val", samples, step=trainer.global_step, by_position=True,
                   title=f"samples (epoch {trainer.current_epoch})")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logged = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx % self.log_interval or self.logged >= self.log_max_samples or not trainer.is_global_zero:
            return
        records = [r for r in (outputs or []) if isinstance(r, dict) and "prediction" in r]
        if not records:
            return
        records = records[: self.log_max_samples - self.logged]
        rows = {sid: i for i, sid in enumerate(batch.get("sample_id", []))}
        samples = []
        for rec in records:
            row = rows.get(rec["sample_id"])
            samples.append(self._sample(trainer, pl_module, batch, row, rec["prediction"], rec))
        self.logged += len(samples)
        self._emit(trainer, "test", samples, step=batch_idx, by_position=False, title=f"samples (test batch {batch_idx})")

    # -- building samples -----------------------------------------------------------------------------------------
    def _mean_std(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The normalisation the data module applied to the views (read from the model, as the data module does)."""
        if self._normalisation is None:
            dm = trainer.datamodule
            views = typed(ViewSettings, dm.hparams if dm is not None else None)
            prep = pl_module.image_preprocessing(views.use_vision_processor)
            self._normalisation = (tuple(prep.mean), tuple(prep.std))
        return self._normalisation

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any], row: int | None,
                prediction: str, record: dict[str, Any] | None = None) -> LoggedSample:
        """A sample from a test record (``record``) or from batch row ``row``; views from batch row ``row``."""
        src = record if record is not None else {k: batch[k][row] for k in ("sample_id", "index", "image", "query",
                                                                              "references")}
        views = _sample_views(batch, row) if row is not None else None
        strip = views_strip(views, *self._mean_std(trainer, pl_module)) if views is not None else None
        return LoggedSample(
            sample_id=str(src["sample_id"]),
            index=int(src.get("index", -1)),
            image=str(src.get("image", "")),
            query=str(src["query"]),
            prediction=str(prediction),
            references=tuple(str(r) for r in (src.get("references") or [])),
            strip=strip,
        )

    # -- writing ----------------------------------------------------------------------------------------------------
    def _emit(self, trainer: L.Trainer, stage: str, samples: list[LoggedSample], step: int, by_position: bool,
              title: str) -> None:
        if not samples:
            return
        if self.console:
            rank_zero_info(f"{title}:\n{_console_lines(samples)}")
        if not trainer.is_global_zero:
            return
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                write_tensorboard_samples(lg, stage, samples, step, by_position)
            elif isinstance(lg, CSVLogger):
                write_csv_samples(lg, stage, samples, step, trainer.current_epoch)
            elif isinstance(lg, WandbLogger):
                write_wandb_samples(lg, stage, samples, step)
            elif type(lg).__name__ not in self._skipped_loggers:
                self._skipped_loggers.add(type(lg).__name__)
                logger.info("SampleLogger: no sample writer for %s; samples go to its other loggers only",
                            type(lg).__name__)


def write_tensorboard_samples(tb: TensorBoardLogger, stage: str, samples: Sequence[LoggedSample], step: int,
                              by_position: bool) -> None:
    """``<stage>/samples`` text (markdown table) and one ``<stage>/views/<key>`` image per sample.

    Args:
        tb: The trainer's TensorBoard logger.
        stage: ``val`` or ``test``.
        samples: What to log.
        step: Global step (validation) or batch index (test).
        by_position: Key images by position in the list (stable across validation epochs) instead of sample id.
    """
    writer = tb.experiment
    writer.add_text(f"{stage}/samples", samples_markdown(samples), global_step=step)
    for n, s in enumerate(samples):
        if s.strip is not None:
            key = str(n) if by_position else s.sample_id
            writer.add_image(f"{stage}/views/{key}", s.strip, global_step=step, dataformats="CHW")
    writer.flush()


def write_csv_samples(csv_logger: CSVLogger, stage: str, samples: Sequence[LoggedSample], step: int, epoch: int) -> Path:
    """Appends rows to ``samples.csv`` in the CSV logger's ``log_dir`` (header once); returns its path.

    References are stored as a JSON list in one column.
    """
    path = Path(csv_logger.log_dir) / SAMPLES_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(SAMPLES_CSV_COLUMNS)
        for s in samples:
            writer.writerow([stage, epoch, step, s.sample_id, s.index, s.image, s.query, s.prediction,
                             json.dumps(list(s.references), ensure_ascii=False)])
    return path


def write_wandb_samples(wandb_logger: WandbLogger, stage: str, samples: Sequence[LoggedSample], step: int) -> None:
    """A ``wandb.Table`` under ``<stage>/samples``: views (``wandb.Image``), image, query, prediction, references."""
    import wandb  # optional dependency: WandbLogger cannot be built without it

    rows = []
    for s in samples:
        image = None
        if s.strip is not None:
            image = wandb.Image((s.strip.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        rows.append([s.sample_id, image, s.image, s.query, s.prediction, "\n".join(s.references)])
    wandb_logger.log_table(key=f"{stage}/samples", columns=["sample_id", "views", "image", "query", "prediction",
                                                             "references"], data=rows, step=step)


def fit_tensorboard_logger(run_dir: str | Path) -> TensorBoardLogger:
    """``fit``'s default logger: TensorBoard event files in ``<run_dir>/tensorboard/version_<N>/``.

    A new version folder per ``fit`` into the same run directory (``--exist_ok true``), so curves never mix.
    """
    return TensorBoardLogger(save_dir=str(run_dir), name=FIT_LOG_DIR, default_hp_metric=False)
