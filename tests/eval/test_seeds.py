"""The permutation test that compares two settings over seeds (vidvlm.eval.seeds)."""

from __future__ import annotations

import itertools
import random

import pytest

from vidvlm.eval.seeds import permutation_p


def _brute_force(a, b):
    """Every assignment of run labels (ordered positions), not combinations of values: an independent count."""
    pooled, n = [*a, *b], len(a)
    observed = abs(sum(a) / n - sum(b) / len(b))
    hits = total = 0
    for first in itertools.combinations(range(len(pooled)), n):
        x = [pooled[i] for i in first]
        y = [pooled[i] for i in range(len(pooled)) if i not in first]
        hits += abs(sum(x) / n - sum(y) / len(y)) >= observed - 1e-9
        total += 1
    return hits / total


def test_two_a_side_worked_by_hand():
    # {1,2} | {3,4}: of the six relabellings, {1,2} and {3,4} separate the means by 2, the others by 1 or 0
    assert permutation_p([1.0, 2.0], [3.0, 4.0]) == pytest.approx(2 / 6)


def test_separated_groups_reach_the_smallest_p_and_identical_ones_p_one():
    assert permutation_p([0.9, 0.8, 0.85, 0.95], [0.1, 0.2, 0.15, 0.05]) == pytest.approx(2 / 70)
    assert permutation_p([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == 1.0


def test_matches_an_independent_count_and_is_symmetric():
    rng = random.Random(3)
    for n, m in [(3, 5), (4, 4), (6, 2), (5, 5)]:
        a = [round(rng.random(), 3) for _ in range(n)]
        b = [round(rng.random() + 0.2, 3) for _ in range(m)]
        p = permutation_p(a, b)
        assert p == pytest.approx(_brute_force(a, b))
        assert permutation_p(b, a) == pytest.approx(p)


def test_the_sampled_p_is_close_to_the_exact_one_and_reproducible():
    rng = random.Random(7)
    a = [rng.gauss(0.0, 1.0) for _ in range(9)]
    b = [rng.gauss(0.8, 1.0) for _ in range(9)]
    exact = permutation_p(a, b)  # comb(18, 9) = 48620 relabellings, below the exact limit
    sampled = permutation_p(a, b, samples=20_000, seed=1)
    assert 0.0 < exact < 1.0
    assert sampled == pytest.approx(exact, abs=0.01)
    assert permutation_p(a, b, samples=20_000, seed=1) == sampled


def test_an_empty_setting_is_an_error():
    with pytest.raises(ValueError, match="at least one run"):
        permutation_p([], [1.0])
