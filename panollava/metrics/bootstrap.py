"""Bootstrap statistics over per-sample caption scores: confidence intervals, a paired significance test, and
Holm's correction for several comparisons.

Both functions resample with replacement and recompute the mean of the per-sample scores; they never re-run the
scorer. What is resampled: *samples* (an (image, query) pair with all of its references) by default, or, given
``clusters`` (the panorama of each sample), whole clusters — the cluster (block) bootstrap. Queries about one
panorama are correlated (a model that misreads a panorama tends to fail all of its queries), so resampling samples
as if independent understates the noise; resampling panoramas keeps each panorama's samples together and gives
honest intervals and p-values. A resample draws as many clusters as there are, with replacement; its statistic is
the mean over all the samples of the drawn clusters (a ratio estimator: clusters of different sizes weigh by their
sizes, as in the full-set mean). With one sample per cluster it is exactly the sample bootstrap, draw for draw.

As the scorer is never re-run, CIDEr-D's document frequencies stay those of the full evaluated set (each sample's
CIDEr was computed once against the whole set): the resampled mean is a mean of fixed per-sample values, which is
also how pycocoevalcap's corpus CIDEr is formed (the mean of the per-sample values). For METEOR the corpus score of
pycocoevalcap aggregates statistics over all segments and differs slightly from the mean of the segment scores; the
interval is that of the mean of the per-sample values and is reported as such.

Light module: numpy only. Seeded: the same inputs and seed give the same figures.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from panollava.errors import InvalidInputError

__all__ = [
    "DEFAULT_RESAMPLES",
    "SIGNIFICANCE_LEVEL",
    "BootstrapInterval",
    "bootstrap_interval",
    "holm_adjust",
    "paired_bootstrap_pvalue",
]

#: Resamples of ``compare`` (within the 1,000-10,000 usually recommended; the p-value's floor is 1 / (n + 1)).
DEFAULT_RESAMPLES = 2000

#: Family-wise error rate under which a Holm-adjusted p-value is called significant.
SIGNIFICANCE_LEVEL = 0.05

# resample in chunks of this many index rows: bounds memory to ~chunk * n * 8 bytes
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval of a mean.

    Attributes:
        mean: The mean of the per-sample values (the point estimate).
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        confidence: The interval's nominal coverage, e.g. 0.95.
        num_samples: Number of per-sample values resampled.
        num_resamples: Number of bootstrap resamples.
        num_clusters: Number of clusters resampled (None: samples were resampled).
    """

    mean: float
    low: float
    high: float
    confidence: float
    num_samples: int
    num_resamples: int
    num_clusters: int | None = None


def _as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError(
            f"{name}: expected a non-empty 1-D sequence of per-sample scores, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidInputError(f"{name}: per-sample score #{bad} is {arr[bad]!r}; every score must be a finite number")
    return arr


def _check_resamples(num_resamples: int) -> None:
    if not isinstance(num_resamples, int) or num_resamples < 1:
        raise InvalidInputError(f"num_resamples must be a positive integer, got {num_resamples!r}")


def _cluster_codes(clusters: Sequence[Hashable] | None, n: int, name: str) -> np.ndarray | None:
    """``(N,)`` cluster numbers 0..C-1 in order of first appearance, or None without clusters."""
    if clusters is None:
        return None
    keys = list(clusters)
    if len(keys) != n:
        raise InvalidInputError(f"{name}: {len(keys)} cluster keys for {n} per-sample scores; give one per sample")
    numbers: dict[Hashable, int] = {}
    return np.array([numbers.setdefault(k, len(numbers)) for k in keys], dtype=np.int64)


def _resampled_means(
    values: np.ndarray, num_resamples: int, rng: np.random.Generator, codes: np.ndarray | None = None
) -> np.ndarray:
    """Means of ``num_resamples`` resamples of ``values``: ``(num_resamples,)``.

    Without ``codes`` each resample draws N samples with replacement; with ``codes`` (``(N,)`` cluster numbers) it
    draws C clusters with replacement and averages all the samples of the drawn clusters.
    """
    if codes is None:
        sums, counts = values, None
    else:
        sums = np.bincount(codes, weights=values)
        counts = np.bincount(codes).astype(np.float64)
    n = sums.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(num_resamples, dtype=np.float64)
    for start in range(0, num_resamples, rows):
        stop = min(num_resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        if counts is None:
            means[start:stop] = sums[idx].mean(axis=1)
        else:
            means[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return means


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    clusters: Sequence[Hashable] | None = None,
) -> BootstrapInterval:
    """Percentile bootstrap interval of the mean of per-sample scores.

    Args:
        values: ``(N,)`` per-sample scores (e.g. each sample's CIDEr-D against the full set's document
            frequencies).
        confidence: Nominal coverage in (0, 1).
        clusters: ``(N,)`` cluster key of each sample (its panorama): resample clusters, not samples.
        num_resamples: Bootstrap resamples.
        seed: Seed of numpy's generator.

    Returns:
        The mean and the interval ``[low, high]``.

    Raises:
        InvalidInputError: Empty or non-finite ``values``, ``confidence`` outside (0, 1), a bad resample count, or
            not one cluster key per value.
    """
    arr = _as_values(values, "bootstrap_interval")
    _check_resamples(num_resamples)
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must lie in (0, 1), got {confidence!r}")
    codes = _cluster_codes(clusters, arr.size, "bootstrap_interval")
    means = _resampled_means(arr, num_resamples, np.random.default_rng(seed), codes)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapInterval(
        mean=float(arr.mean()), low=float(low), high=float(high), confidence=confidence,
        num_samples=int(arr.size), num_resamples=num_resamples,
        num_clusters=None if codes is None else int(codes.max()) + 1,
    )


def paired_bootstrap_pvalue(
    baseline: Sequence[float] | np.ndarray,
    system: Sequence[float] | np.ndarray,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    clusters: Sequence[Hashable] | None = None,
) -> float:
    """Two-sided paired bootstrap p-value for "the two systems have the same mean score".

    The per-sample differences ``d = system - baseline`` (same samples, same order) are resampled together; the
    resampled mean differences are centred on the observed one (the null distribution of the statistic), and
    the p-value is the share of resamples at least as far from the centre as the observed difference is from 0,
    with the ``(count + 1) / (num_resamples + 1)`` correction (as in sacreBLEU's paired bootstrap). Identical
    systems give exactly 1; a difference far beyond the sampling noise gives the floor ``1 / (num_resamples + 1)``.

    Args:
        baseline: ``(N,)`` per-sample scores of the baseline.
        system: ``(N,)`` per-sample scores of the other system on the same samples, in the same order.
        num_resamples: Bootstrap resamples.
        seed: Seed of numpy's generator.
        clusters: ``(N,)`` cluster key of each sample (its panorama): resample clusters of paired differences.

    Returns:
        The p-value in (0, 1].

    Raises:
        InvalidInputError: Empty, non-finite or differently sized inputs, a bad resample count, or not one
            cluster key per sample.
    """
    a = _as_values(baseline, "paired_bootstrap_pvalue baseline")
    b = _as_values(system, "paired_bootstrap_pvalue system")
    if a.shape != b.shape:
        raise InvalidInputError(
            f"paired_bootstrap_pvalue: the two systems must be scored on the same samples; got {a.size} and "
            f"{b.size} per-sample scores"
        )
    _check_resamples(num_resamples)
    diff = b - a
    observed = float(diff.mean())
    codes = _cluster_codes(clusters, diff.size, "paired_bootstrap_pvalue")
    means = _resampled_means(diff, num_resamples, np.random.default_rng(seed), codes)
    # tolerance: sums of identical floats in another order may differ in the last bits
    tol = 1e-12 * max(1.0, float(np.abs(diff).max()))
    count = int(np.count_nonzero(np.abs(means - observed) >= abs(observed) - tol))
    return (count + 1) / (num_resamples + 1)


def holm_adjust(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values of several comparisons (``None`` entries are left out).

    Sorted ascending, the i-th smallest of m p-values becomes ``min(1, max_{j <= i} (m - j + 1) p_(j))``; an
    adjusted p-value below the level α rejects its hypothesis with a family-wise error rate of at most α, under
    any dependence between the comparisons (Holm 1979).

    Args:
        pvalues: One p-value per comparison, or None where there was no test.

    Returns:
        The adjusted p-values, in the input order (None stays None).
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * float(p)))
        adjusted[i] = running
    return adjusted
