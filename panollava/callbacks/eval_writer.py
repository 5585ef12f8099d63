"""``EvaluationWriter``: exactly-once, resumable ``test`` / ``predict`` outputs on any number of processes.

What it does, by hook (see :mod:`panollava.evaluation.state` for the files):

* ``setup`` — rank 0 takes the output folder's lock (:mod:`panollava.evaluation.lock`: a second evaluation in the
  folder is refused at once) and holds it until the run ends; it checks the folder (fingerprint, images,
  ``--overwrite``), reads the finished records of earlier attempts and broadcasts their ids; every rank tells the
  data module to skip them, so the loaders shard only the remaining panoramas
  (:mod:`panollava.evaluation.sharding`). Multi-rank runs start the failure watchdog
  (:mod:`panollava.evaluation.watchdog`).
* run start — SIGTERM stops the run like Ctrl-C (:mod:`panollava.evaluation.interrupt`).
* each batch — the rank appends the batch's finished records to its own shard file (flushed + fsynced); a failed
  write is kept like a failed batch (the rank skips its remaining batches); rank 0 shows a progress bar of samples
  done across all ranks (it counts the lines of every rank's shard).
* epoch end — every rank reports whether it failed (one all-gather, so a failing rank ends the run everywhere
  instead of leaving the others waiting); the records of all ranks are gathered; rank 0 merges them with the
  resumed ones, checks that every dataset sample is there exactly once, scores once (test), writes
  ``predictions.jsonl``, ``predictions.csv``, ``report.html`` and ``metrics.json`` as one set, and removes the
  shards; then it tells every rank how that went (one broadcast), so a failure in the merge, the scoring or the
  write ends every rank with its message.
* interruption (Ctrl-C, SIGTERM, an error) — the shards stay; the rank leaves a failure marker for the watchdogs of
  the others; the message says how many samples are saved and that the same command resumes.
"""

from __future__ import annotations

import logging
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from tqdm.auto import tqdm

from panollava.distributed import all_gather_objects
from panollava.errors import MetricFailedError, PanoLLaVAError, environment_error
from panollava.evaluation import interrupt, testhooks
from panollava.evaluation.interrupt import EvaluationInterrupted
from panollava.evaluation.lock import OutputLock
from panollava.evaluation.state import (
    FINAL_FILES,
    ShardWriter,
    _check_writable,
    begin_attempt,
    count_shard_lines,
    evaluation_fingerprint,
    finish_attempt,
    shard_path,
)
from panollava.evaluation.watchdog import FailureWatchdog, write_marker
from panollava.metrics.meteor import prestart_meteor
from panollava.metrics.names import OFFICIAL_METRICS
from panollava.outputs.files import attach_scores, write_predictions
from panollava.outputs.report_html import write_report_html
from panollava.schema import EvaluationOptions

logger = logging.getLogger(__name__)


EVAL_PG_TIMEOUT = timedelta(hours=4)
"""Process-group timeout for evaluation: ranks that finish early wait for the slowest one and for rank 0's scoring
(METEOR's JVM on a large set) inside collectives; Lightning's default (30 minutes) is too short for that."""


def set_evaluation_timeout(trainer: L.Trainer, timeout: timedelta = EVAL_PG_TIMEOUT) -> None:
    """Gives a not-yet-started DDP strategy the evaluation timeout (no effect on other strategies)."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and getattr(strategy, "_timeout", None) is not None:
        strategy._timeout = max(strategy._timeout, timeout)


class RankFailedError(PanoLLaVAError, RuntimeError):
    """Another process of the evaluation failed; its error is in the message (and its exit status is kept)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _describe(exc: BaseException) -> tuple[str, int]:
    """``(message, exit status)`` of a failure, for the other ranks: a user error's own text, a bug's type too."""
    if isinstance(exc, PanoLLaVAError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        explained = environment_error(exc)
        if explained is not None:
            return str(explained), explained.exit_code
    return f"{type(exc).__name__}: {exc}", 2


def _user_error(exc: BaseException) -> BaseException:
    """A machine's state (full disk, no permission) as the user error it is; anything else unchanged."""
    if isinstance(exc, OSError) and not isinstance(exc, PanoLLaVAError):
        return environment_error(exc) or exc
    return exc


class EvaluationWriter(Callback):
    """Writes the evaluation's records as they finish and the final outputs once (see the module docstring).

    Args:
        output_dir: The output folder (created). Never the run directory unless the user asks for it.
        provenance: Extra top-level entries of ``metrics.json`` (checkpoint, settings, dataset, versions); also
            the input of the resume fingerprint.
        mode: ``"test"`` (score and write ``metrics.json``) or ``"predict"`` (captions only).
        overwrite: Start fresh even if the folder holds another evaluation.
        strict_metrics: Fail (non-zero exit) when a metric is unavailable here (METEOR without Java, SPICE).
        progress: Show a progress bar of samples on rank 0.
    """

    def __init__(
        self,
        output_dir: str,
        provenance: dict[str, Any] | None = None,
        *,
        mode: str = "test",
        overwrite: bool = EvaluationOptions.overwrite,
        strict_metrics: bool = EvaluationOptions.strict_metrics,
        progress: bool = EvaluationOptions.progress,
    ) -> None:
        if mode not in ("test", "predict"):
            raise ValueError(f"mode must be 'test' or 'predict', got {mode!r}")
        self.output_dir = Path(output_dir)
        self.provenance = dict(provenance or {})
        self.mode = mode
        self.overwrite = overwrite
        self.strict_metrics = strict_metrics
        self.progress = progress
        self.metrics: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        self.attempt: str | None = None
        self.generated = 0  # captions generated by this attempt, all ranks (set at the end)
        self._done: dict[str, dict[str, Any]] = {}
        self._num_done = 0
        self._local: list[dict[str, Any]] = []
        self._shard = None
        self._bar = None
        self._offsets: dict[Path, tuple[int, int]] = {}
        self._finished = False
        self._error: BaseException | None = None  # a failure of this rank outside test_step (a shard write)
        self._lock = None
        self._watchdog = None
        self._previous_sigterm = None
        self._rank = 0
        self._world_size = 1

    # -- start ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != self.mode:
            return

        datamodule = trainer.datamodule
        samples = datamodule.datasets[self.mode].samples
        sample_ids = [s.sample_id for s in samples]
        if len(set(sample_ids)) != len(sample_ids):  # internal invariant: ids are derived from (url, query[, row])
            raise RuntimeError("duplicate sample ids in the evaluation dataset")
        self._rank, self._world_size = trainer.global_rank, trainer.world_size
        self._finished, self._error = False, None
        payload: tuple[str, Any, Any]
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                _check_writable(self.output_dir)
                self._lock = OutputLock(self.output_dir)
                self._lock.acquire()  # held until the run ends (teardown / on_exception)
                fingerprint = evaluation_fingerprint(
                    self.provenance, mode=self.mode, precision=str(trainer.precision),
                    device_type=trainer.strategy.root_device.type,
                )
                images = {s.url: s.image_path for s in samples}
                attempt, done = begin_attempt(
                    self.output_dir, fingerprint, mode=self.mode, overwrite=self.overwrite,
                    sample_ids=sample_ids, world_size=trainer.world_size, images=images,
                )
                self._done = done
                payload = ("ok", attempt, sorted(done))
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = _user_error(exc)
                payload = ("error", *_describe(error))
                self._release_lock()
        else:
            payload = ("", None, None)
        status, value, done_ids = trainer.strategy.broadcast(payload, src=0)
        if status == "error":
            if error is not None:
                raise error
            raise RankFailedError(f"rank 0 could not start the evaluation: {value}", done_ids)
        self.attempt = value
        if trainer.world_size > 1:
            self._watchdog = FailureWatchdog(self.output_dir, self.attempt, trainer.global_rank)
            self._watchdog.start()
        self._num_done = len(done_ids)
        datamodule.skip_sample_ids[self.mode] = set(done_ids)
        self._total = len(sample_ids)
        self._local = []
        remaining = self._total - self._num_done
        if trainer.is_global_zero:
            if self._num_done and not remaining:
                logger.info("nothing to generate: all %d samples in '%s' are done; writing the outputs again",
                            self._total, self.output_dir)
            elif self._num_done:
                logger.info("resuming '%s': %d of %d samples are done, %d remain", self.output_dir,
                            self._num_done, self._total, remaining)
            else:
                logger.info("evaluating %d samples on %d process(es) into '%s'", self._total, trainer.world_size,
                            self.output_dir)
        if trainer.is_global_zero and self.mode == "test" and remaining:
            prestart_meteor(shutil.which("java"))  # its 5-6 s JVM start overlaps generation, not the final step
        if trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.disable()  # counts batches of rank 0 only; ours counts samples
        if trainer.is_global_zero and self.progress and remaining:
            self._bar = tqdm(total=self._total, initial=self._num_done, desc=self.mode, unit="sample",
                             file=sys.stderr, dynamic_ncols=True, leave=True)

    # -- run start ------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        # After Lightning registered its own handlers (it restores the original ones at teardown).
        self._previous_sigterm = interrupt.install()

    def on_test_start(self, trainer, pl_module) -> None:
        if self.mode == "test":
            self._start()

    def on_predict_start(self, trainer, pl_module) -> None:
        if self.mode == "predict":
            self._start()

    # -- per batch ------------------------------------------------------------------------------------------------
    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        interrupt.enter_batch()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        interrupt.enter_batch()

    def _write_shard(self, trainer: L.Trainer, pl_module: L.LightningModule, records: list[dict[str, Any]]) -> None:
        """Appends the records to this rank's shard; a failure is kept (like a failed batch) on several ranks."""
        if self._error is not None:
            return
        try:
            if self._shard is None:
                self._shard = ShardWriter(shard_path(self.output_dir, self.attempt, trainer.global_rank))
            self._shard.append(records)
        except Exception as exc:  # noqa: BLE001 - reported to every rank at the epoch's end
            error = _user_error(exc)
            if trainer.world_size == 1:
                raise error from (exc if error is not exc else None)
            logger.error("rank %d: cannot write its shard: %s", trainer.global_rank, _describe(error)[0])
            self._error = error
            if getattr(pl_module, "eval_error", None) is None:
                pl_module.eval_error = error  # the module skips this rank's remaining batches
            return
        self._local.extend(records)
        testhooks.note_flushed()
        testhooks.pause("flushed", interrupt.requested)

    def _batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any) -> None:
        records = list(outputs or [])
        if records:
            self._write_shard(trainer, pl_module, records)
        interrupt.leave_batch()  # a SIGTERM during the batch stops here at the latest
        if self._bar is not None:
            done = self._num_done + count_shard_lines(self.output_dir, self.attempt, self._offsets)
            self._bar.update(max(0, done - self._bar.n))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(trainer, pl_module, outputs)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(trainer, pl_module, outputs)

    # -- end ------------------------------------------------------------------------------------------------------
    def _close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _end_run(self) -> None:
        """Releases what the run held: the shard, the bar, the SIGTERM handler, the watchdog, the lock."""
        self._close()
        interrupt.uninstall(self._previous_sigterm)
        self._previous_sigterm = None
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        self._release_lock()

    def _raise_failures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every rank learns whether any rank failed; all raise (the failing rank its own error)."""
        own = self._error or getattr(pl_module, "eval_error", None)
        failures = all_gather_objects([(trainer.global_rank, _describe(own) if own is not None else None)])
        failures = [(rank, described) for rank, described in failures if described is not None]
        if not failures:
            return
        self._close()
        if own is not None:
            raise own
        rank, (message, code) = failures[0]
        raise RankFailedError(f"rank {rank} failed: {message}", code)

    def _merge(self, trainer: L.Trainer, gathered: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All records in dataset order, each dataset sample exactly once (rank 0); raises naming what is wrong."""
        samples = trainer.datamodule.datasets[self.mode].samples
        order = {s.sample_id: i for i, s in enumerate(samples)}
        merged: dict[str, dict[str, Any]] = dict(self._done)
        for record in gathered:
            sid = record["sample_id"]
            if sid in merged:
                raise RuntimeError(f"sample {sid!r} was generated twice (internal error: sharding must not repeat)")
            merged[sid] = record
        missing = [s.sample_id for s in samples if s.sample_id not in merged]
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(samples)} samples have no caption after merging the shards (e.g. "
                f"{missing[:5]}); rerun the same command to generate them"
            )
        records = sorted(merged.values(), key=lambda r: order[r["sample_id"]])
        for record in records:
            record["index"] = order[record["sample_id"]]
        return records

    def _score(self, records: list[dict[str, Any]]):
        """Scores on rank 0: ``(scores or None, note or None)``; a metric that raises is in ``scores``."""
        from panollava.metrics.metric import CaptionMetric

        if not any(r.get("references") for r in records):
            return None, "the CSV has no annotations: captions are written without scores"
        metric = CaptionMetric(object_gather_fn=lambda obj: [obj], prestart_meteor=False)
        metric.update([r["sample_id"] for r in records], [r["prediction"] for r in records],
                      [r["references"] for r in records])
        metric.compute()
        return metric.last_scores, None

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_failures(trainer, pl_module)
        gathered = all_gather_objects(self._local)
        self.generated = len(gathered)
        if self._bar is not None:  # every rank is done now: the shards rank 0 counted may have lagged behind
            self._bar.update(max(0, self._num_done + self.generated - self._bar.n))
        self._close()
        # Rank 0 merges, scores and writes; then one broadcast tells every rank how that went, so a failure in any
        # of those steps ends every rank with its message (never a rank left waiting in a collective).
        outcome: tuple[str, Any, int] = ("ok", None, 0)
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                records = self._merge(trainer, gathered)
                scores, note = self._score(records) if self.mode == "test" else (None, None)
                if scores is not None:
                    values = {n: scores.corpus[n] for n in OFFICIAL_METRICS if scores.corpus[n] is not None}
                    values.update(scores.secondary)
                    for name, value in values.items():
                        pl_module.log(f"test/{name}", float(value), rank_zero_only=True)
                    pl_module.test_scores = scores
                if note:
                    logger.warning("%s", note)
                self._write(trainer, pl_module, records, scores)
            except Exception as exc:  # noqa: BLE001 - told to every rank below, then raised
                error = _user_error(exc)
                outcome = ("error", *_describe(error))
        if trainer.world_size > 1:
            outcome = trainer.strategy.broadcast(outcome, src=0)

        self._finished = outcome[0] == "ok" or outcome[2] == MetricFailedError.exit_code  # the set is written
        if error is not None:
            raise error
        if outcome[0] == "error":
            if outcome[2] == MetricFailedError.exit_code:  # the results are written; a metric failed
                raise MetricFailedError(f"rank 0: {outcome[1]}")
            raise RankFailedError(f"rank 0 failed: {outcome[1]}", outcome[2])

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, records: list[dict[str, Any]], scores) -> None:
        self.records = attach_scores(records, scores.per_sample if scores is not None else None)
        describe = getattr(pl_module, "describe_decoding", None)
        evaluation = {
            "mode": self.mode,
            "attempt": self.attempt,
            "world_size": trainer.world_size,
            "resumed": self._num_done,
            "generated": self.generated,
        }
        if self.mode == "test":
            metrics = scores.to_metrics_json() if scores is not None else {"scores": None}
            metrics["num_samples"] = len(self.records)
            name = "metrics.json"
        else:
            metrics = {"num_samples": len(self.records)}
            name = "predict_info.json"
        metrics.update(self.provenance)
        metrics["evaluation"] = evaluation
        # What the decode step really used (top_k, the path that ran, the KV cache), not only what was asked.
        metrics["decoding_requested"] = metrics.get("decoding")
        metrics["decoding"] = describe() if describe is not None else metrics.get("decoding")

        def write_outputs() -> None:
            write_predictions(self.output_dir, self.records)
            if self.mode == "test":
                write_report_html(self.output_dir, self.records, metrics)

        finish_attempt(self.output_dir, mode=self.mode, attempt=self.attempt, generated=self.generated,
                       write_outputs=write_outputs, metrics_name=name, metrics=metrics)
        self.metrics = metrics
        logger.info("wrote %d predictions%s to '%s' (%d generated now, %d resumed)", len(self.records),
                    " and metrics.json" if self.mode == "test" else "", self.output_dir, self.generated,
                    self._num_done)
        if scores is not None:  # a metric that raised (or, strict, one unavailable here): non-zero exit, results kept
            scores.raise_for_failures(strict=self.strict_metrics,
                                      written=[str(self.output_dir / n) for n in FINAL_FILES[self.mode]])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.mode == "test":
            self._finish(trainer, pl_module)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.mode == "predict":
            self._finish(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == self.mode:
            self._end_run()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        count = self._shard.count if self._shard is not None else 0
        self._close()
        try:
            if self.attempt is None:
                return
            if self._world_size > 1:  # the other ranks' watchdogs end them if the normal path cannot
                write_marker(self.output_dir, self.attempt, self._rank, _describe(exception)[0]
                             if isinstance(exception, Exception) else f"interrupted ({type(exception).__name__})")
            if self._finished:
                return
            saved = self._num_done + count
            if isinstance(exception, EvaluationInterrupted):
                what = f"interrupted by {exception.signal_name}"
            elif isinstance(exception, KeyboardInterrupt):
                what = "interrupted"
            else:
                what = "stopped by an error"
            logger.warning(
                "evaluation %s on rank %d: %d sample(s) are saved in '%s' (this rank's shard flushed). Rerun the "
                "same command with the same --output_dir to resume.", what, trainer.global_rank, saved,
                self.output_dir,
            )
        finally:
            interrupt.uninstall(self._previous_sigterm)
            self._previous_sigterm = None
            self._release_lock()  # the watchdog keeps running: it ends this rank if its teardown hangs


__all__ = ["EvaluationWriter", "RankFailedError"]
