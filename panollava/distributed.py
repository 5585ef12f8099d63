"""Gathering Python objects (per-sample records, errors) across ranks.

Evaluation never pads or repeats samples (``panollava.evaluation.sharding``), so gathered records are never
de-duplicated: a sample id seen twice is an error wherever it is found (the one duplicate policy, docs/data.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_objects(items: Sequence[Any]) -> list[Any]:
    """Concatenate a picklable list from every rank (in rank order); the list itself when not distributed."""
    import torch.distributed as dist

    if world_size() == 1:
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]
