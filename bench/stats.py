"""Order statistics for benchmark samples: percentiles of one run, medians across rounds."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction 0.5 = p50, 0.999 = p999) of unsorted samples.

    Nearest rank, not interpolation: a reported p99 is a latency some request really had.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(samples)
    rank = math.ceil(fraction * len(ordered))
    return float(ordered[max(rank, 1) - 1])


def median(values: Sequence[float]) -> float:
    """The median of the per-round figures; the mean of the middle two for an even count."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far apart the rounds were, to report how noisy a figure is."""
    if not values:
        raise ValueError("spread of no values")
    mid = median(values)
    return 0.0 if mid == 0 else (max(values) - min(values)) / abs(mid)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics x(i), x(n-1-i) (0-based)
    with the largest i for which P(Binomial(n, 1/2) <= i) <= (1 - confidence) / 2, so the true
    median lies outside with probability at most 1 - confidence. Too few values for that (fewer
    than 6 at 95%): (min, max)."""
    if not values:
        raise ValueError("median interval of no values")
    ordered = sorted(values)
    n = len(ordered)
    tail = (1.0 - confidence) / 2
    index, cdf = 0, 0.0
    for i in range(n // 2):
        cdf += math.comb(n, i) / 2.0**n
        if cdf > tail:
            break
        index = i
    return float(ordered[index]), float(ordered[n - 1 - index])
