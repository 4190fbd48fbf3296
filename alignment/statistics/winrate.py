"""Head-to-head evaluation maths: win / tie / lose shares, win rate, bootstrap intervals, a
length-controlled win rate (AlpacaEval-style), and the rank correlation of the controllability
curve (MOSS Fig. 8)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from alignment.statistics.intervals import prompt_indices


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


def point_win_rate(results: Sequence[int]) -> float:
    """The win rate of A over B in ``results`` (:func:`outcomes`): the share of wins plus half the share of
    ties, without an interval (:func:`win_rate` gives one)."""
    return (sum(r == 1 for r in results) + 0.5 * sum(r == 0 for r in results)) / len(results)


def win_rate(results: Sequence[int], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> WinRate:
    """Shares and win rate of A over B, with a percentile bootstrap interval over prompts."""
    if not results:
        raise ValueError("no outcomes to summarise")
    n = len(results)
    rng = random.Random(seed)
    boots = sorted(point_win_rate([results[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = boots[int((1 - level) / 2 * n_boot)]
    hi = boots[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return WinRate(win=sum(r == 1 for r in results) / n, tie=sum(r == 0 for r in results) / n,
                   lose=sum(r == -1 for r in results) / n, win_rate=point_win_rate(results), ci_low=lo, ci_high=hi, n=n)


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


LC_RIDGE = 1e-4
"""L2 penalty of ``length_controlled`` per outcome: the fit minimises the summed cross-entropy plus
``LC_RIDGE * n / 2 * (b0**2 + b1**2)``. Scaled by ``n`` so the estimate does not drift with the
number of prompts; small enough that with equal lengths the value stays within ~3e-4 of the raw
win rate (for raw rates up to 0.95), large enough that all wins (or a reply length that separates
the outcomes perfectly) still gives finite coefficients: all wins read 0.9993."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = LC_RIDGE, max_iter: int = 100) -> tuple[float, float]:
    """``(b0, b1)`` of ``p = sigmoid(b0 + b1 x)`` fitted to soft labels ``y`` by Newton steps with a
    backtracking line search on the ridge-penalised cross-entropy (convex: the minimum is unique)."""
    n = len(y)
    design = np.stack([np.ones(n), x], axis=1)
    lam = ridge * n
    b = np.zeros(2)

    def loss(b: np.ndarray) -> float:
        z = design @ b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * b @ b)

    current = loss(b)
    for _ in range(max_iter):
        p = _sigmoid(design @ b)
        grad = design.T @ (p - y) + lam * b
        hess = (design * (p * (1 - p))[:, None]).T @ design + lam * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            candidate = b - t * step
            new = loss(candidate)
            if new <= current - 1e-4 * t * float(grad @ step) or t < 1e-8:
                break
            t *= 0.5
        b, current = candidate, new
        if float(np.max(np.abs(t * step))) < 1e-10:
            break
    return float(b[0]), float(b[1])


def length_controlled(results: Sequence[int], len_a: Sequence[float], len_b: Sequence[float], n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95, clusters: Sequence[int] | None = None) -> dict[str, Any]:
    """Win rate of A over B with the reply lengths' effect removed (AlpacaEval's length-controlled
    win rate, without its per-instruction terms).

    A logistic regression of the outcome (1 win, 0.5 tie, 0 lose: soft labels, cross-entropy) on
    ``x = tanh((len_a - len_b) / s)``, ``s`` the standard deviation of the length differences (1 when
    they are all equal): ``p = sigmoid(b0 + b1 x)``. The length-controlled win rate is the fitted
    win probability at equal lengths, ``sigmoid(b0)``; ``length_coef`` is ``b1`` (> 0: the longer
    reply tends to win). The fit carries a small ridge penalty, ``LC_RIDGE``.

    The interval is a percentile bootstrap over prompts (``x`` kept from the full sample, the
    regression refitted on each resample), seeded and deterministic. ``clusters`` (one id per
    outcome) resamples whole clusters instead: with the outcomes of several seeds on the same
    prompts pooled, the prompt's id, so that a prompt drawn counts with all its seeds (prompts
    shared by the seeds are not independent outcomes).

    When length separates the outcomes perfectly (the longer reply always wins and no two replies
    are near-equal in length) the win probability at equal length is not identified by the data;
    the value then depends on the penalty and on the closest pairs, not only on the win rate.
    """
    n = len(results)
    if len(len_a) != n or len(len_b) != n:
        raise ValueError(f"{n} outcomes but {len(len_a)} lengths for A and {len(len_b)} for B")
    if n == 0:
        raise ValueError("no outcomes to summarise")
    if any(r not in (-1, 0, 1) for r in results):
        raise ValueError("outcomes must be +1 (A wins), 0 (tie) or -1 (B wins)")
    diff = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    if not np.all(np.isfinite(diff)):
        raise ValueError("reply lengths must be finite numbers")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    scale = float(diff.std())
    x = np.tanh(diff / (scale if scale > 0 else 1.0))
    y = (np.asarray(results, dtype=float) + 1.0) / 2.0
    b0, b1 = _fit_logistic(x, y)
    rng = np.random.default_rng(seed)
    if clusters is None:
        draws = list(rng.integers(0, n, size=(n_boot, n)))
    else:
        if len(clusters) != n:
            raise ValueError(f"{n} outcomes but {len(clusters)} cluster ids")
        ids, inverse = np.unique(np.asarray(clusters), return_inverse=True)
        members = [np.flatnonzero(inverse == c) for c in range(len(ids))]
        draws = [np.concatenate([members[c] for c in picked]) for picked in prompt_indices(len(ids), n_boot, seed)]
    boots = sorted(1.0 / (1.0 + math.exp(-_fit_logistic(x[idx], y[idx])[0])) for idx in draws)
    lo = boots[int((1 - level) / 2 * n_boot)]
    hi = boots[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return {"value": 1.0 / (1.0 + math.exp(-b0)), "ci": [lo, hi], "length_coef": b1, "n": n}
