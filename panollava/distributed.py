"""Gathering per-sample records across ranks without duplicates.

Lightning's ``DistributedSampler`` pads the last batches by repeating samples, so every rank may hold a few
records that another rank also holds. Records carry their ``sample_id`` (and dataset ``index``); gathering keeps the
first copy of each id and restores dataset order.
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


def dedupe_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first record of each ``sample_id``; sort by dataset ``index`` when present."""
    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        seen.setdefault(rec["sample_id"], rec)
    out = list(seen.values())
    if out and all("index" in r for r in out):
        out.sort(key=lambda r: r["index"])
    if len(out) != len(records):
        logger.info("dropped %d duplicate record(s) added by the distributed sampler", len(records) - len(out))
    return out


def gather_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' records, de-duplicated by sample id and in dataset order (on every rank)."""
    return dedupe_records(all_gather_objects(records))
