"""The Gao et al. (2022) over-optimisation fits: known curves in, their parameters and peaks out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment.statistics.scaling import fit, fitted_points, peak_kl, rl_curve


def test_rl_fit_recovers_alpha_beta_and_the_peak():
    kl = np.linspace(0.0, 9.0, 30)
    gold = rl_curve(np.sqrt(kl), 0.2, 0.5, 0.4) + np.random.default_rng(0).normal(0, 1e-3, 30)
    f = fit(kl, gold, "rl")
    assert f["fitted"] and math.isclose(f["alpha"], 0.5, abs_tol=0.02) and math.isclose(f["beta"], 0.4, abs_tol=0.02)
    assert f["r2"] > 0.99 and math.isclose(f["peak_kl"], math.exp(2 * (0.5 / 0.4 - 1)), rel_tol=0.1)
    xs, ys = fitted_points(f)
    assert len(xs) == 100 and math.isclose(xs[-1], 9.0)


def test_bon_fit_recovers_the_quadratic():
    kl = [math.log(n) - (n - 1) / n for n in (1, 2, 4, 8, 16, 32, 64)]
    d = np.sqrt(kl)
    pm = 0.1 + d * (0.8 - 0.3 * d)
    f = fit(kl, list(pm), "bon")
    assert f["fitted"] and math.isclose(f["alpha"], 0.8, rel_tol=1e-4) and math.isclose(f["beta"], 0.3, rel_tol=1e-4)
    assert math.isclose(f["peak_kl"], (0.8 / 0.6) ** 2, rel_tol=1e-4) and math.isclose(f["r2"], 1.0)


def test_a_short_path_says_so_and_no_peak_without_a_downturn():
    f = fit([0.0, 0.5, 1.0], [0.1, 0.2, 0.3], "rl")
    assert not f["fitted"] and "too short" in f["reason"] and f["n"] == 3
    assert fit([0.1] * 8, [0.1] * 8, "bon")["fitted"] is False  # one distinct KL
    assert peak_kl("rl", 0.5, -0.1) is None and peak_kl("bon", 0.5, 0.0) is None
    assert fit([0.0, 1, 2, 3, 4, None], [0.1, 0.2, None, 0.3, 0.4, 0.5], "rl")["n"] == 4  # unknowns left out
    with pytest.raises(ValueError, match="form"):
        fit([1.0], [1.0], "ppo")
