"""Which process evaluates which samples, and how they form batches: whole panoramas, no padding, no repeats.

Lightning's ``DistributedSampler`` pads the last batches by repeating samples, and spreads the queries of one
panorama over ranks and batches. Here instead:

* :func:`group_by_panorama` — the samples of one image form one group (dataset order inside, groups in the order of
  their first sample);
* :func:`assign_to_ranks` — whole groups go to ranks, balanced by sample count (largest group first, each to the
  least loaded rank, ties to the lowest rank), deterministic for a given dataset and world size. No sample is
  padded, repeated or dropped; with more ranks than panoramas some ranks get nothing;
* :func:`pack_batches` — within a rank, batches of at most ``batch_size`` samples that hold whole panoramas when
  they fit; a panorama with more queries than a batch holds fills consecutive batches, so that its image features
  can carry over from one batch to the next.

Pure functions of plain lists: no torch, no I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PanoramaGroup:
    """The samples of one panorama.

    Attributes:
        key: The panorama's identity (its absolute image path).
        indices: Dataset indices of its samples, in dataset order.
    """

    key: str
    indices: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)


def group_by_panorama(image_keys: Sequence[str], include: Iterable[int] | None = None) -> list[PanoramaGroup]:
    """Groups dataset indices by panorama.

    Args:
        image_keys: ``image_keys[i]`` is the panorama of dataset sample ``i``.
        include: Only these dataset indices (e.g. the samples not yet done); None includes all.

    Returns:
        One group per panorama, in the order of each panorama's first included sample.
    """
    wanted = None if include is None else set(include)
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(image_keys):
        if wanted is None or index in wanted:
            groups.setdefault(key, []).append(index)
    return [PanoramaGroup(key, tuple(indices)) for key, indices in groups.items()]


def assign_to_ranks(groups: Sequence[PanoramaGroup], world_size: int) -> list[list[PanoramaGroup]]:
    """Splits whole panoramas over ``world_size`` ranks, balanced by sample count.

    Args:
        groups: The panorama groups (from :func:`group_by_panorama`).
        world_size: Number of processes (>= 1).

    Returns:
        ``world_size`` lists of groups; each list is in dataset order (by first index).

    Raises:
        ValueError: ``world_size`` < 1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shards: list[list[PanoramaGroup]] = [[] for _ in range(world_size)]
    heap = [(0, rank) for rank in range(world_size)]  # (samples assigned, rank): least loaded, then lowest rank
    for group in sorted(groups, key=lambda g: (-len(g), g.indices[0])):
        load, rank = heapq.heappop(heap)
        shards[rank].append(group)
        heapq.heappush(heap, (load + len(group), rank))
    for shard in shards:
        shard.sort(key=lambda g: g.indices[0])
    return shards


def pack_batches(groups: Sequence[PanoramaGroup], batch_size: int) -> list[list[int]]:
    """Packs a rank's panoramas into batches of dataset indices.

    A panorama's samples stay together when they fit in one batch (a panorama that does not fit in the current
    batch starts the next one); one with more samples than ``batch_size`` fills consecutive batches, and its last
    partial chunk may be followed by other panoramas.

    Args:
        groups: The rank's groups, in the order to evaluate them.
        batch_size: Most samples per batch (>= 1).

    Returns:
        Batches of dataset indices; every index of every group exactly once, in group order.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        indices = list(group.indices)
        if len(indices) <= batch_size:
            if len(current) + len(indices) > batch_size:
                batches.append(current)
                current = []
            current.extend(indices)
            continue
        if current:
            batches.append(current)
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        batches.extend(chunks[:-1])
        current = chunks[-1]
    if current:
        batches.append(current)
    return batches


def rank_batches(
    image_keys: Sequence[str], rank: int, world_size: int, batch_size: int, skip: Iterable[int] = ()
) -> list[list[int]]:
    """The batches (dataset indices) that process ``rank`` evaluates.

    Args:
        image_keys: ``image_keys[i]`` is the panorama of dataset sample ``i``.
        rank: This process's global rank.
        world_size: Number of processes.
        batch_size: Most samples per batch.
        skip: Dataset indices already done (a resumed run): they are left out before sharding, so the remaining
            work is balanced.

    Returns:
        The rank's batches; empty when it has nothing to do.
    """
    skipped = set(skip)
    remaining = [i for i in range(len(image_keys)) if i not in skipped]
    shards = assign_to_ranks(group_by_panorama(image_keys, remaining), world_size)
    return pack_batches(shards[rank], batch_size)
