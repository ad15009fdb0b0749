"""Is one setting better than another over seeds? A two-sided permutation test on the difference of means.

Runs of two settings that differ only in their seeds give two small samples of a score (a handful of seeds each). The
test asks how often a random relabelling of the pooled runs into groups of the same sizes separates the means at
least as far as the real labels do. It assumes nothing about the scores' distribution, and with few seeds it is
computed exactly, over every relabelling. With four seeds a side the smallest p it can give is 2 / 70 = 0.029; with
two a side, 2 / 6 = 0.33: two seeds a side can never show a difference.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

EXACT_LIMIT = 200_000  # relabellings enumerated exactly; above this, a fixed-seed random sample of that many


def permutation_p(a: Sequence[float], b: Sequence[float], samples: int = EXACT_LIMIT, seed: int = 0) -> float:
    """Two-sided p of ``mean(a) - mean(b)`` under random relabelling of the pooled scores.

    Args:
        a, b: one score per run of each setting (at least one each).
        samples: the relabellings drawn when there are more than that many (and the exact count's limit).
        seed: the random sample's seed (the answer is reproducible).

    Returns:
        The share of relabellings whose absolute difference of means is at least the observed one (the observed
        labelling counts, so p > 0). Exact when ``comb(len(a) + len(b), len(a)) <= samples``.
    """
    if not a or not b:
        raise ValueError(f"permutation_p: each setting needs at least one run, got {len(a)} and {len(b)}")
    pooled = [float(v) for v in (*a, *b)]
    n, total = len(a), sum(pooled)

    def gap(first: Sequence[float]) -> float:
        s = sum(first)
        return abs(s / n - (total - s) / (len(pooled) - n))

    observed = gap(pooled[:n]) - 1e-12 * max(1.0, abs(total))  # ties in floating point count as "as far"
    relabellings = math.comb(len(pooled), n)
    if relabellings <= samples:
        return sum(gap(first) >= observed for first in itertools.combinations(pooled, n)) / relabellings
    rng = random.Random(seed)
    hits = 1  # the observed labelling
    for _ in range(samples - 1):
        hits += gap(rng.sample(pooled, n)) >= observed
    return hits / samples
