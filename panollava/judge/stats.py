"""Panorama-cluster bootstrap of a mean: the judge's interval resamples panoramas, not samples.

The queries of one panorama share its picture, so their scores are not independent; resampling samples would
give an interval that is too narrow. Here the clusters (one per panorama) are drawn with replacement and the
statistic is the mean over every sample of the drawn clusters (a ratio of sums: clusters of different sizes
weigh by their number of samples, as in the point estimate).

NOTE: :mod:`panollava.metrics.bootstrap` is getting a cluster bootstrap of its own (another change, in parallel);
this small function stands in for it until then and should be replaced by it.

Light module: numpy only. Seeded: the same inputs and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from panollava.errors import InvalidInputError

__all__ = ["ClusterInterval", "cluster_bootstrap_interval"]


@dataclass(frozen=True)
class ClusterInterval:
    """A percentile interval of a mean, from resampling clusters.

    Attributes:
        mean: The mean of all values (the point estimate).
        low: Lower bound.
        high: Upper bound.
        confidence: Nominal coverage (0.95).
        num_clusters: Clusters (panoramas) resampled.
        num_resamples: Bootstrap resamples.
        seed: Seed of numpy's generator.
    """

    mean: float
    low: float
    high: float
    confidence: float
    num_clusters: int
    num_resamples: int
    seed: int


def cluster_bootstrap_interval(
    values: Sequence[float],
    clusters: Sequence[str],
    *,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> ClusterInterval:
    """Percentile interval of the mean of ``values``, resampling whole clusters with replacement.

    Args:
        values: ``(N,)`` per-sample values.
        clusters: ``(N,)`` the cluster (panorama) of each value.
        confidence: Nominal coverage in (0, 1).
        num_resamples: Bootstrap resamples.
        seed: Seed of numpy's generator.

    Returns:
        The mean and its interval.

    Raises:
        InvalidInputError: Empty or non-finite values, or lengths that differ.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or arr.size != len(clusters):
        raise InvalidInputError(
            f"cluster bootstrap: expected as many clusters as values (non-empty), got {arr.size} values and "
            f"{len(clusters)} clusters"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("cluster bootstrap: every value must be a finite number")
    if not 0.0 < confidence < 1.0 or num_resamples < 1:
        raise InvalidInputError(f"cluster bootstrap: confidence {confidence!r} / num_resamples {num_resamples!r}")
    _, index = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(index, weights=arr)
    counts = np.bincount(index).astype(np.float64)
    k = sums.size
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    rows = max(1, 4_000_000 // k)  # bounds memory to ~rows * k * 8 bytes
    for start in range(0, num_resamples, rows):
        stop = min(num_resamples, start + rows)
        draw = rng.integers(0, k, size=(stop - start, k))
        means[start:stop] = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return ClusterInterval(mean=float(arr.mean()), low=float(low), high=float(high), confidence=confidence,
                           num_clusters=int(k), num_resamples=num_resamples, seed=seed)
