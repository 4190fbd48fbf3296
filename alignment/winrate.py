"""Head-to-head evaluation maths: win / tie / lose shares, win rate, bootstrap intervals, and
the rank correlation of the controllability curve (MOSS Fig. 8)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WinRate:
    win: float
    tie: float
    lose: float
    win_rate: float  # wins + half the ties
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def outcomes(scores_a: Sequence[float], scores_b: Sequence[float], tie_margin: float = 0.0) -> list[int]:
    """+1 where A beats B by more than ``tie_margin``, -1 where B beats A, 0 for a tie."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} scores for A but {len(scores_b)} for B")
    return [0 if abs(a - b) <= tie_margin else (1 if a > b else -1) for a, b in zip(scores_a, scores_b)]


def _rate(results: Sequence[int]) -> float:
    return (sum(r == 1 for r in results) + 0.5 * sum(r == 0 for r in results)) / len(results)


def win_rate(results: Sequence[int], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> WinRate:
    """Shares and win rate of A over B, with a percentile bootstrap interval over prompts."""
    if not results:
        raise ValueError("no outcomes to summarise")
    n = len(results)
    rng = random.Random(seed)
    boots = sorted(_rate([results[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = boots[int((1 - level) / 2 * n_boot)]
    hi = boots[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return WinRate(win=sum(r == 1 for r in results) / n, tie=sum(r == 0 for r in results) / n,
                   lose=sum(r == -1 for r in results) / n, win_rate=_rate(results), ci_low=lo, ci_high=hi, n=n)


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # average rank for ties
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("spearman needs two sequences of equal length >= 2")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return 0.0 if vx == 0 or vy == 0 else cov / (vx * vy)


def seeds_win_rate(per_seed: Sequence[Sequence[int]], n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> WinRate:
    """Win rate over several training seeds (the mean of the seeds' win rates, each seed judged on
    its own prompts) with a two-level bootstrap interval: resample the seeds, then the prompts
    within each resampled seed. With one seed it is ``win_rate`` of that seed."""
    if not per_seed or any(not s for s in per_seed):
        raise ValueError("every seed needs at least one outcome")
    if len(per_seed) == 1:
        return win_rate(per_seed[0], n_boot, seed, level)
    rng = random.Random(seed)
    k = len(per_seed)
    boots = []
    for _ in range(n_boot):
        total = 0.0
        for _ in range(k):
            res = per_seed[rng.randrange(k)]
            total += _rate([res[rng.randrange(len(res))] for _ in range(len(res))])
        boots.append(total / k)
    boots.sort()
    lo = boots[int((1 - level) / 2 * n_boot)]
    hi = boots[min(n_boot - 1, int((1 + level) / 2 * n_boot))]

    def share(v: int) -> float:
        return sum(sum(r == v for r in s) / len(s) for s in per_seed) / k

    return WinRate(win=share(1), tie=share(0), lose=share(-1), win_rate=sum(_rate(s) for s in per_seed) / k,
                   ci_low=lo, ci_high=hi, n=sum(len(s) for s in per_seed))


def mean_interval(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed ``values`` and a percentile bootstrap interval over the seeds."""
    if not values:
        raise ValueError("no values")
    rng = random.Random(seed)
    n = len(values)
    boots = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (sum(values) / n, boots[int((1 - level) / 2 * n_boot)],
            boots[min(n_boot - 1, int((1 + level) / 2 * n_boot))])
