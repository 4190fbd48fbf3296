"""alignment.statistics.intervals on hand-made tables: the crossed and nested designs, decided pairs, Holm,
rank intervals, and PAT's controllability trend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from alignment.statistics.intervals import (
    controllability,
    crossed_interval,
    decided_interval,
    gap_interval,
    holm,
    prompt_indices,
    rank_intervals,
    win_rate_interval,
)


def test_shared_prompt_effects_do_not_shrink_with_seeds():
    """Seeds that agree exactly on prompts that differ: the seed means are equal, yet the prompts'
    spread stays in the interval (resampling seeds alone would give a zero width)."""
    row = [0.0, 1.0] * 20
    three, thirty = crossed_interval([row] * 3), crossed_interval([row] * 30)
    assert three.value == 0.5 and math.isclose(three.high - three.low, thirty.high - thirty.low)
    assert three.high - three.low > 0.2
    # each seed its own prompts (nested): the spread of the seed means only
    nested = crossed_interval([row, row[::-1], row], shared_prompts=False)
    assert nested.low == nested.high == 0.5


def test_a_seed_effect_widens_the_interval_by_the_t_quantile():
    y = np.array([[shift] * 50 for shift in (-1.0, 0.0, 1.0)])  # no prompt effect, no noise
    w = crossed_interval(y)
    # the seed part dominates: the half-width is t(2) times the standard error of the seed means
    assert math.isclose(w.high - w.value, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-3)
    assert w.df == pytest.approx(2.0)


def test_decided_pairs_leave_ties_out():
    per_seed = [[1, 1, 0, 0, 0, -1], [1, 0, 0, 0, 1, -1]]
    d = decided_interval(per_seed)
    assert d.value == pytest.approx(4 / 6) and d.low < d.value < d.high
    assert decided_interval([[0, 0], [0, 0]]) is None
    assert win_rate_interval(per_seed).value == pytest.approx((4 + 0.5 * 6) / 12)
    with pytest.raises(ValueError, match="same, non-zero number"):
        win_rate_interval([[1, 0], [1]])
    gap = gap_interval(per_seed, [[1, 0, 0, 0, 0, 0]] * 2, decided=True)
    assert gap.value == pytest.approx(4 / 6 - 1.0)


def test_holm_matches_statsmodels_and_ranks_follow_the_decisions():
    p = [0.01, 0.04, 0.03, 0.2]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([]) == []
    ranks = rank_intervals(["a", "b", "c"], {("a", "b"): True, ("a", "c"): True})
    assert ranks == {"a": (1, 1), "b": (2, 3), "c": (2, 3)}


def test_one_index_vector_for_every_seed_and_policy():
    a, b = prompt_indices(10, 5, seed=3), prompt_indices(10, 5, seed=3)
    assert a.shape == (5, 10) and (a == b).all() and a.max() < 10


def test_controllability_trend_over_paired_prompts():
    tags = [0, 50, 100]
    rising = np.array([[0.1, 0.2, 0.3, 0.1], [0.2, 0.3, 0.4, 0.2], [0.3, 0.4, 0.5, 0.3]])
    c = controllability(tags, [rising, rising + 0.01])
    assert c["spearman"]["value"] == 1.0 and c["spearman"]["ci"] is None
    assert c["trend"]["value"] == 1.0 and c["trend"]["p"] == 0.0  # every prompt rises with the tag
    flat = controllability(tags, [np.array([[0.1, 0.3], [0.3, 0.1], [0.2, 0.2]])])
    assert flat["trend"]["value"] == pytest.approx(0.0) and flat["trend"]["ci"][0] < 0 < flat["trend"]["ci"][1]
    with pytest.raises(ValueError, match="3 tags"):
        controllability(tags, [rising[:2]])
