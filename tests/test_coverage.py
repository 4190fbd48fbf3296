"""Coverage of the reported 95% intervals on simulated sweeps: every seed judged on the same
prompts (shared per-prompt effects), seeds that differ (seed-to-seed spread), and outcomes that are
wins, ties and losses. Every interval the sweep reports must cover the truth at least 93% of the time.

The simulation is vectorised: each scenario draws ``R`` whole sweeps at once and runs the batched
estimators of ``alignment.statistics.intervals`` on all of them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from alignment.statistics.intervals import (
    crossed_parts,
    decided_linear,
    gap_interval,
    half_width,
    spearman_rows,
    t_interval,
    win_rate_interval,
)

R = 1500  # sweeps per scenario: a coverage of 0.95 is measured to about +-0.006
FLOOR = 0.93
SCENARIOS = [  # seeds, prompts, seed spread, prompt spread (in units of the per-reply noise)
    (3, 128, 0.3, 0.5), (3, 128, 0.0, 0.5), (3, 128, 0.4, 0.3), (3, 25, 0.6, 0.3), (3, 25, 0.3, 0.0),
    (3, 25, 0.1, 1.0), (5, 128, 0.3, 0.5), (5, 48, 0.15, 0.3),
]


def _latent(rng: np.random.Generator, k: int, n: int, sa: float, sb: float, shift: float) -> tuple[np.ndarray, ...]:
    """Quality of method A over B per sweep, seed and prompt: shift + seed effect + prompt effect
    (the same prompts for every seed) + noise; and the seed and prompt effects alone."""
    a = rng.normal(0, sa, (R, k, 1))
    b = rng.normal(0, sb, (R, 1, n))
    return shift + a + b + rng.normal(0, 1.0, (R, k, n)), a, b


def _outcomes(latent: np.ndarray, margin: float) -> np.ndarray:
    return np.where(latent > margin, 1.0, np.where(latent < -margin, -1.0, 0.0))


def _truth(sa: float, sb: float, shift: float, margin: float) -> tuple[float, float]:
    """The population win rate (ties half) and win share among decided pairs, by quadrature over
    the seed and prompt effects (their sum is normal with variance sa^2 + sb^2)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    mu = shift + np.sqrt(sa ** 2 + sb ** 2) * x
    win, lose = stats.norm.sf(margin - mu), stats.norm.cdf(-margin - mu)
    w = w / w.sum()
    p_win, p_lose = float(w @ win), float(w @ lose)
    return p_win + 0.5 * (1 - p_win - p_lose), p_win / (p_win + p_lose)


def _coverage(estimate: np.ndarray, parts: dict[str, np.ndarray], truth: float) -> float:
    return float(np.mean(np.abs(estimate - truth) <= half_width(parts) + 1e-12))


@pytest.mark.parametrize(("k", "n", "sa", "sb"), SCENARIOS)
def test_win_rate_and_gap_intervals_cover(k, n, sa, sb):
    rng = np.random.default_rng(1000 * k + n)
    latent, a, b = _latent(rng, k, n, sa, sb, shift=0.3)
    gold = _outcomes(latent, 0.5)  # a coarse judge: ties often
    # the preference model sees the same replies, scores them finely and is gamed by a shift
    pm = _outcomes(latent + 0.4 + rng.normal(0, 0.3, latent.shape), 0.05)
    wr_gold, dec_gold = _truth(sa, sb, 0.3, 0.5)
    # the PM's truth: its latent is the gold latent plus 0.4 and independent noise of sd 0.3
    s = np.hypot(1.0, 0.3)  # in units of its own noise
    wr_pm, dec_pm = _truth(sa / s, sb / s, 0.7 / s, 0.05 / s)

    y_gold, y_pm = (gold + 1) / 2, (pm + 1) / 2
    parts = crossed_parts(y_gold)
    assert _coverage(parts["mean"], parts, wr_gold) >= FLOOR  # win rate, ties half
    r_gold, z_gold = decided_linear(gold)
    assert _coverage(r_gold, crossed_parts(z_gold), dec_gold) >= FLOOR  # decided pairs only
    gap = crossed_parts(y_pm - y_gold)
    assert _coverage(gap["mean"], gap, wr_pm - wr_gold) >= FLOOR  # over-optimisation gap, ties half
    r_pm, z_pm = decided_linear(pm)
    assert _coverage(r_pm - r_gold, crossed_parts(z_pm - z_gold), dec_pm - dec_gold) >= FLOOR  # decided gap


def test_the_old_designs_do_not_cover():
    """What the test guards against: resampling prompts within each seed independently (as if the
    seeds had their own prompts) and a [min, max] over three seeds both cover too little here."""
    rng = np.random.default_rng(7)
    latent, a, b = _latent(rng, 3, 128, 0.05, 0.8, shift=0.3)
    y = (_outcomes(latent, 0.5) + 1) / 2
    truth = _truth(0.05, 0.8, 0.3, 0.5)[0]
    within = y.var(axis=-1, ddof=1).mean(axis=-1) / (3 * 128)  # independent prompts per seed
    assert np.mean(np.abs(y.mean(axis=(-2, -1)) - truth) <= 1.96 * np.sqrt(within)) < 0.9
    shared = crossed_parts(y)
    assert _coverage(shared["mean"], shared, truth) >= FLOOR


def test_seed_level_t_interval_covers_and_min_max_does_not():
    rng = np.random.default_rng(3)
    values = rng.normal(0.8, 0.1, (R, 3))
    q = stats.t.ppf(0.975, 2)
    half = q * values.std(axis=1, ddof=1) / np.sqrt(3)
    assert np.mean(np.abs(values.mean(axis=1) - 0.8) <= half) >= FLOOR
    assert np.mean((values.min(axis=1) <= 0.8) & (0.8 <= values.max(axis=1))) < 0.8  # [min, max]: 75%
    one = t_interval(list(values[0]))
    assert one.low is not None and np.isclose(one.high - one.value, half[0])


def test_the_scalar_functions_match_the_batched_ones():
    rng = np.random.default_rng(5)
    latent, _, _ = _latent(rng, 3, 40, 0.3, 0.5, shift=0.2)
    o = _outcomes(latent[0], 0.5).astype(int)
    w = win_rate_interval(o.tolist())
    parts = crossed_parts((o + 1) / 2)
    assert np.isclose(w.value, parts["mean"]) and np.isclose(w.high - w.value, half_width(parts))
    # the p-value is the level at which the interval reaches 0.5
    assert (w.p < 0.05) == (w.low > 0.5 or w.high < 0.5)
    g = gap_interval(o.tolist(), o.tolist())
    assert g.value == 0 and g.low == g.high == 0 and g.p == 1.0


@pytest.mark.parametrize(("curve", "sa"), [([0.3, 0.32, 0.34, 0.36, 0.38, 0.40], 0.03),
                                           ([0.3, 0.4, 0.5, 0.5, 0.5, 0.5], 0.1)])
def test_controllability_trend_interval_covers(curve, sa):
    """PAT's paired per-prompt trend (mean per-prompt Spearman of score with tag) over 3 seeds and 48
    shared control prompts, the seeds' curves shifted per tag; truth from 100,000 simulated prompts."""
    tags, k, n = [0, 20, 40, 60, 80, 100], 3, 48
    rng = np.random.default_rng(11)

    def scores(shape: tuple[int, ...], seed_shift: np.ndarray) -> np.ndarray:
        prompt = rng.normal(0, 0.2, (*shape[:-3], 1, 1, shape[-1]))
        return np.asarray(curve)[:, None] + seed_shift + prompt + rng.normal(0, 0.3, shape)

    # the truth averages over seeds too: a fresh seed shift of each tag for each simulated prompt
    big = scores((1, len(tags), 100_000), rng.normal(0, sa, (1, len(tags), 100_000)))[0]
    truth = float(spearman_rows(tags, big.T).mean())
    y = scores((R, k, len(tags), n), rng.normal(0, sa, (R, k, len(tags), 1)))
    per_prompt = spearman_rows(tags, np.swapaxes(y, -1, -2))  # [R, seed, prompt]
    parts = crossed_parts(per_prompt)
    assert _coverage(parts["mean"], parts, truth) >= FLOOR
