"""The length-controlled win rate: a logistic regression of the outcome on the length difference,
read at equal lengths (AlpacaEval-style)."""

from __future__ import annotations

import pytest

from alignment.statistics.winrate import length_controlled, point_win_rate


def design(n_long_a: int, n_long_b: int, n_near: int, base: float = 200.0):
    """The longer reply always wins: A longer by 20-219 tokens on ``n_long_a`` prompts (A wins), B
    longer by as much on ``n_long_b`` (B wins), near-equal lengths (within 2 tokens) tie."""
    results, len_a, len_b = [], [], []
    for i in range(n_long_a):
        results.append(1)
        len_a.append(base + 20 + (i * 7) % 200)
        len_b.append(base)
    for i in range(n_long_b):
        results.append(-1)
        len_a.append(base)
        len_b.append(base + 20 + (i * 13) % 200)
    for i in range(n_near):
        results.append(0)
        len_a.append(base + i % 5 - 2)
        len_b.append(base)
    return results, len_a, len_b


def test_length_explains_everything_gives_half():
    # half the prompts A is longer (mirrored differences), the longer one always wins
    results = [1] * 40 + [-1] * 40
    len_a = [300 + 5 * i for i in range(40)] + [100] * 40
    len_b = [100] * 40 + [300 + 5 * i for i in range(40)]
    lc = length_controlled(results, len_a, len_b, n_boot=200)
    assert lc["value"] == pytest.approx(0.5, abs=1e-6)
    assert lc["length_coef"] > 5

    # A longer on 80% of prompts: raw 0.8, but length explains it all
    results, len_a, len_b = design(75, 15, 10)
    assert point_win_rate(results) == pytest.approx(0.8)
    lc = length_controlled(results, len_a, len_b, n_boot=200)
    assert lc["value"] == pytest.approx(0.5, abs=0.05)
    assert lc["length_coef"] > 5
    assert lc["n"] == 100


def test_a_wins_regardless_of_length_keeps_the_raw_rate():
    # A wins 9 prompts in 10 at every length difference from -200 to +190 tokens
    results, len_a, len_b = [], [], []
    for level in range(-20, 20):
        for j in range(10):
            results.append(-1 if j == 0 else 1)
            len_a.append(200 + 10 * level)
            len_b.append(200)
    raw = point_win_rate(results)
    lc = length_controlled(results, len_a, len_b, n_boot=200)
    assert raw == pytest.approx(0.9)
    assert lc["value"] == pytest.approx(raw, abs=0.02)
    assert abs(lc["length_coef"]) < 0.01


@pytest.mark.parametrize("results", [
    [1] * 7 + [0] * 2 + [-1] * 3,
    [1] * 18 + [0] * 1 + [-1] * 1,
    [-1] * 10 + [0] * 5 + [1] * 2,
    [0] * 6,
])
def test_equal_lengths_give_the_raw_win_rate(results):
    n = len(results)
    lc = length_controlled(results, [150] * n, [150] * n, n_boot=100)
    assert lc["value"] == pytest.approx(point_win_rate(results), abs=1e-3)
    assert lc["length_coef"] == pytest.approx(0.0, abs=1e-9)


def test_all_wins_stay_finite_and_near_one():
    lc = length_controlled([1] * 30, [100] * 30, [100] * 30, n_boot=50)
    assert 0.995 < lc["value"] < 1.0
    lc = length_controlled([1] * 30, [100 + i for i in range(30)], [110] * 30, n_boot=50)
    assert 0.99 < lc["value"] < 1.0


def test_interval_contains_the_value_and_is_deterministic():
    results, len_a, len_b = design(50, 30, 20)
    results = [r if i % 4 else -r for i, r in enumerate(results)]  # noise: length no longer decides
    first = length_controlled(results, len_a, len_b, n_boot=300, seed=3)
    again = length_controlled(results, len_a, len_b, n_boot=300, seed=3)
    other = length_controlled(results, len_a, len_b, n_boot=300, seed=4)
    assert first == again
    assert first["ci"] != other["ci"] and first["value"] == other["value"]
    lo, hi = first["ci"]
    assert lo < first["value"] < hi
    assert 0.0 < lo and hi < 1.0
    narrow = length_controlled(results, len_a, len_b, n_boot=300, seed=3, level=0.5)
    assert lo <= narrow["ci"][0] <= narrow["ci"][1] <= hi


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="lengths"):
        length_controlled([1, -1, 0], [10, 20], [10, 20, 30])
    with pytest.raises(ValueError, match="lengths"):
        length_controlled([1, -1], [10, 20], [10, 20, 30])
    with pytest.raises(ValueError):
        length_controlled([], [], [])
    with pytest.raises(ValueError):
        length_controlled([2, 1], [10, 20], [10, 20])
