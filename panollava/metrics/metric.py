"""``CaptionMetric``: the COCO caption metrics as a torchmetrics ``Metric``, correct under DDP.

Its state is Python objects (sample ids, predictions, reference lists), which tensor all-gathers cannot carry,
so ``_sync_dist`` gathers them with ``torch.distributed.all_gather_object``. Every sample must be added exactly
once across all ranks: :func:`merge_states` refuses a sample id seen twice (Lightning's padding
``DistributedSampler`` repeats samples; panollava's evaluation loaders never do), then sorts the samples by id, so
that 1 or N processes score exactly the same list in the same order. Rank 0 scores (one METEOR JVM, not one per
rank) and broadcasts the result to the other ranks.

``compute()`` returns ``{"bleu_1": tensor, ...}`` for logging (available official metrics, then the secondary
ones); the full :class:`~panollava.metrics.CaptionScores` (per-sample scores, reasons, implementations) is
kept on ``last_scores``.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric

from panollava.errors import InvalidInputError
from panollava.metrics.caption_scores import CaptionScores, score_captions
from panollava.metrics.meteor import prestart_meteor as start
from panollava.metrics.names import OFFICIAL_METRICS

logger = logging.getLogger(__name__)

__all__ = ["CaptionMetric", "merge_states", "sample_sort_key"]

_STATES = ("sample_ids", "predictions", "references")
_DIGITS = re.compile(r"(\d+)")


def sample_sort_key(sample_id: str) -> tuple[Any, ...]:
    """Natural order of sample ids ("2" before "10", "img_2" before "img_10")."""
    parts = (part for part in _DIGITS.split(sample_id) if part)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)


def merge_states(states: Sequence[dict[str, list[Any]]]) -> tuple[list[str], list[str], list[list[str]]]:
    """Merge the states of several ranks, in natural id order; each sample id must appear once.

    Args:
        states: Per rank, ``{"sample_ids": [...], "predictions": [...], "references": [...]}`` (parallel
            lists).

    Returns:
        ``(sample_ids, predictions, references)``.

    Raises:
        InvalidInputError: A sample id appears twice (the one duplicate policy: never silently dropped).
    """
    merged: dict[str, tuple[str, list[str]]] = {}
    for rank, state in enumerate(states):
        for sid, prediction, refs in zip(state["sample_ids"], state["predictions"], state["references"]):
            if sid in merged:
                same = merged[sid] == (prediction, list(refs))
                how = "identical copies" if same else "with different predictions or references"
                raise InvalidInputError(
                    f"sample_id {sid!r} was scored twice ({how}; second copy from rank {rank}): every sample must "
                    "be scored exactly once. Sample ids must be unique in the dataset, and a distributed loader must "
                    "not pad by repeating samples (panollava's evaluation loaders never do)"
                )
            merged[sid] = (prediction, list(refs))
    ids = sorted(merged, key=sample_sort_key)
    return ids, [merged[i][0] for i in ids], [merged[i][1] for i in ids]


def _scoring_rank() -> bool:
    """Whether this process is the one that scores (rank 0, or not distributed)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _as_id(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return str(value)


class CaptionMetric(Metric):
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when available) as pycocoevalcap computes them.

    Args:
        tokenizer: PTB tokenizer: ``"auto"``, ``"python"`` or ``"java"``.
        meteor_timeout_s: Seconds METEOR may take before its process is killed (METEOR is then unavailable).
        secondary: Also compute the torchmetrics BLEU-4/ROUGE-L on PTB tokens (``torchmetrics_*_ptb``).
        meteor: Set ``False`` to skip METEOR.
        object_gather_fn: ``obj -> [obj of rank 0, obj of rank 1, ...]``; default ``all_gather_object`` on the
            default group. Tests pass a fake one together with ``distributed_available_fn=lambda: True``.
        prestart_meteor: Start METEOR's JVM now, on the rank that will score (rank 0), so that its 5-6 s start
            overlaps caption generation instead of delaying ``compute``.
        kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        tokenizer: str = "auto",
        meteor_timeout_s: float = 300.0,
        secondary: bool = True,
        meteor: bool = True,
        object_gather_fn: Callable[[Any], list[Any]] | None = None,
        prestart_meteor: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.meteor_timeout_s = meteor_timeout_s
        self.secondary = secondary
        self.meteor = meteor
        self.object_gather_fn = object_gather_fn
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx=None)
        self.last_scores: CaptionScores | None = None
        if meteor and prestart_meteor and _scoring_rank():
            start(shutil.which("java"))

    def update(  # type: ignore[override]
        self, sample_ids: Sequence[Any], predictions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> None:
        """Add a batch.

        Args:
            sample_ids: ``(B,)`` unique ids (strings, ints or a tensor).
            predictions: ``(B,)`` captions; ``""`` is an empty caption (scored, not dropped).
            references: ``(B,)`` lists of reference captions (at least one each).

        Raises:
            InvalidInputError: Lengths differ, a prediction is not a string or a sample has no references.
        """
        if isinstance(sample_ids, torch.Tensor):
            sample_ids = sample_ids.tolist()
        if not (len(sample_ids) == len(predictions) == len(references)):
            raise InvalidInputError(
                f"CaptionMetric.update: {len(sample_ids)} sample ids, {len(predictions)} predictions and "
                f"{len(references)} reference lists; they must match"
            )
        for sid, prediction, refs in zip(sample_ids, predictions, references):
            if not isinstance(prediction, str):
                raise InvalidInputError(
                    f"CaptionMetric.update: prediction of sample {sid!r} is {prediction!r}, not a string "
                    "(an empty caption is '')"
                )
            if isinstance(refs, str) or len(refs) == 0 or not all(isinstance(r, str) for r in refs):
                raise InvalidInputError(
                    f"CaptionMetric.update: references of sample {sid!r} must be a non-empty list of "
                    f"strings, got {refs!r}"
                )
            self.sample_ids.append(_as_id(sid))
            self.predictions.append(prediction)
            self.references.append([str(r) for r in refs])

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> torch.nn.Module:
        # ``.to(device)``, ``.double()`` etc. must leave the string states alone (torchmetrics would call fn
        # on every element).
        return super()._apply(fn, exclude_state=(*exclude_state, *_STATES))

    def _gather(self, obj: Any) -> list[Any]:
        if self.object_gather_fn is not None:
            return list(self.object_gather_fn(obj))
        gathered: list[Any] = [None] * dist.get_world_size(self.process_group)
        dist.all_gather_object(gathered, obj, group=self.process_group)
        return gathered

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        """Gather the string states of all ranks (objects, not tensors) and de-duplicate them."""
        local = {name: list(getattr(self, name)) for name in _STATES}
        states = self._gather(local)
        ids, predictions, references = merge_states(states)
        self.sample_ids, self.predictions, self.references = ids, predictions, references

    def compute(self) -> dict[str, torch.Tensor]:
        """Score everything gathered so far.

        Returns:
            ``{metric: 0-d float tensor}`` for the available official metrics and the secondary ones. The full
            result is on :attr:`last_scores`.
        """
        # After a sync the lists are merged and sorted; without one (single process) do it here.
        ids, predictions, references = merge_states(
            [{"sample_ids": self.sample_ids, "predictions": self.predictions, "references": self.references}]
        )
        distributed = dist.is_available() and dist.is_initialized() and self.object_gather_fn is None
        rank = dist.get_rank(self.process_group) if distributed else 0
        scores: CaptionScores | None = None
        error: BaseException | None = None
        if rank == 0 and ids:
            try:
                scores = score_captions(
                    dict(zip(ids, predictions)),
                    dict(zip(ids, references)),
                    tokenizer=self.tokenizer,
                    meteor_timeout_s=self.meteor_timeout_s,
                    secondary=self.secondary,
                    meteor=self.meteor,
                )
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = exc
        if distributed:
            box: list[Any] = [(scores, error)]
            dist.broadcast_object_list(box, src=dist.get_global_rank(self.process_group, 0)
                                       if self.process_group is not None else 0, group=self.process_group)
            scores, error = box[0]
        if error is not None:
            raise error
        if scores is None:
            raise InvalidInputError("CaptionMetric.compute: no samples were added (update was never called)")
        self.last_scores = scores
        values = {name: scores.corpus[name] for name in OFFICIAL_METRICS if scores.corpus[name] is not None}
        values.update(scores.secondary)
        return {name: torch.tensor(float(value), dtype=torch.float64) for name, value in values.items()}

