"""Methods compared at equal KL: a method's path on the reward-KL plane (PPO by iteration, PAT by
tag, best-of-n by n), read at a fixed KL budget.

A path is a list of points in the order the method's own knob moves them (iterations, tags, n),
each with the KL to the SFT model and a value (gold score, win rate against SFT). The value at a
budget is linear interpolation on the first segment of the path whose KL crosses the budget: the
point where the method first spends that much KL. A budget the path never reaches has no value
(never extrapolated), and neither does one below the path's first point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from alignment.statistics.winrate import outcomes, point_win_rate

BUDGETS = (0.5, 1.0, 2.0, 4.0)  # nats of KL(policy || SFT), per reply


def at_budget(kls: Sequence[float], values: Sequence[float], budget: float) -> float | None:
    """The value at KL ``budget`` on the path ``(kls[i], values[i])``, interpolated on the first
    segment that reaches it, or None when no segment does."""
    if len(kls) != len(values):
        raise ValueError(f"{len(kls)} KLs but {len(values)} values")
    for i, (k, v) in enumerate(zip(kls, values)):
        if k == budget:
            return float(v)
        if i and (kls[i - 1] - budget) * (k - budget) < 0:  # the segment from the previous point crosses it
            k0, v0 = kls[i - 1], values[i - 1]
            return float(v0 + (v - v0) * (budget - k0) / (k - k0))
    return None


def win_share(golds: Sequence[float], reference: Sequence[float]) -> float:
    """The win rate (ties half) of ``golds`` over ``reference``, prompt by prompt."""
    return point_win_rate(outcomes(golds, reference))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of ``values`` (at least two)."""
    x = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)
