"""Intervals over training seeds and test prompts, and the corrections for many claims.

The lab judges every training seed on the same test prompts, so a figure that averages over
seeds and prompts (a win rate, a mean score, a gap between two judges) is a mean of a table
``y[seed, prompt]`` whose rows share their prompts. Its variance has three parts, estimated from
the two-way analysis of variance without replication (a crossed random-effects design)::

    y[s, i] = mu + a[s] + b[i] + e[s, i]
    Var(mean) = var_a / k + var_b / n + var_e / (k n)

The seed part is the variance of the seed means over ``k`` (seed effects and seed-by-prompt
noise); the prompt part comes from the spread of the prompt means, and does not shrink with more
seeds when the prompts are shared. Each part is scaled by its own t quantile (``half_width``): with
three seeds whose spread dominates, the interval is the t-interval over the seed means (2 degrees
of freedom); with prompts that dominate, the usual interval over prompts; in between it is
conservative. Jobs judged on different prompts (nested, not crossed) get the t-interval over their
seed means, which then carries the prompt noise too.

Where prompts are resampled (the length-controlled win rate, a regression refitted per resample),
ONE vector of prompt indices serves every seed and every policy (``prompt_indices``): a prompt drawn
twice counts twice for all of them. A bootstrap over three seeds is never used: it returns
[min, max] and covers about 74%.

Claims about many pairs are corrected with Holm's step-down method (``holm``), and a ranking gets
simultaneous rank intervals from the corrected pairwise differences (``rank_intervals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate, its ``level`` interval, standard error, degrees of freedom, and the two-sided
    p-value against ``null`` (None when no null was given). ``low``/``high`` are None when the
    data cannot carry an interval (one seed of a seed-level figure)."""

    value: float
    low: float | None
    high: float | None
    se: float | None
    df: float | None
    p: float | None = None
    null: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value,
                               "ci": None if self.low is None else [self.low, self.high],
                               "se": self.se, "df": self.df}
        if self.null is not None:
            out |= {"p": self.p, "null": self.null}
        return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _t_interval(value: float, var: float, df: float, level: float, null: float | None,
                bounds: tuple[float, float] | None) -> Interval:
    """``value ± t_{df} · sqrt(var)`` (clipped to ``bounds``) and its p-value against ``null``."""
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        lo = hi = value
        p = None if null is None else (1.0 if np.isclose(value, null) else 0.0)
    else:
        q = float(stats.t.ppf(0.5 + level / 2, df))
        lo, hi = value - q * se, value + q * se
        p = None if null is None else float(2 * stats.t.sf(abs(value - null) / se, df))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Interval(float(value), float(lo), float(hi), se, _finite(df) if se else None, p, null)


def crossed_parts(y: np.ndarray, shared_prompts: bool = True) -> dict[str, np.ndarray]:
    """The mean of tables ``y[..., seed, prompt]`` (batched over leading axes) and the two parts of
    its variance, each with its degrees of freedom: ``seed`` (the variance of the seed means over
    ``k``, ``k - 1`` degrees of freedom: the seed effects and the seed-by-prompt noise) and
    ``prompt`` (the shared prompt effects, ``(MS_prompt - MS_residual) / (k n)`` kept at zero or
    above, Satterthwaite's degrees of freedom). Nested (each seed its own prompts): the seed part
    alone, which then carries the prompt noise. One seed: the prompt part is the variance over
    prompts over ``n`` (``n - 1`` degrees of freedom)."""
    y = np.asarray(y, dtype=float)
    k, n = y.shape[-2], y.shape[-1]
    if k < 1 or n < 1 or (k == 1 and n == 1):
        raise ValueError(f"need at least two cells to estimate a variance, got {k} seed(s) x {n} prompt(s)")
    mean = y.mean(axis=(-2, -1))
    zero = np.zeros(mean.shape)
    if k == 1:
        return {"mean": mean, "seed": zero, "df_seed": zero + 1.0,
                "prompt": y[..., 0, :].var(axis=-1, ddof=1) / n, "df_prompt": zero + (n - 1.0)}
    seed_means = y.mean(axis=-1)
    seed = seed_means.var(axis=-1, ddof=1) / k
    if not shared_prompts or n == 1:
        return {"mean": mean, "seed": seed, "df_seed": zero + (k - 1.0), "prompt": zero, "df_prompt": zero + 1.0}
    prompt_means = y.mean(axis=-2)
    ms_p = k * prompt_means.var(axis=-1, ddof=1)
    resid = y - seed_means[..., :, None] - prompt_means[..., None, :] + mean[..., None, None]
    df_e = (k - 1) * (n - 1)
    ms_e = (resid ** 2).sum(axis=(-2, -1)) / df_e
    diff = np.maximum(ms_p - ms_e, 0.0)
    denom = ms_p ** 2 / (n - 1) + ms_e ** 2 / df_e
    with np.errstate(divide="ignore", invalid="ignore"):
        df_p = np.where((diff > 0) & (denom > 0), diff ** 2 / np.where(denom > 0, denom, 1.0), n - 1.0)
    return {"mean": mean, "seed": seed, "df_seed": zero + (k - 1.0), "prompt": diff / (k * n),
            "df_prompt": np.clip(df_p, 1.0, None)}


def half_width(parts: dict[str, np.ndarray], level: float = LEVEL) -> np.ndarray:
    """Half-width of the interval: ``sqrt(t_{df_s}^2 var_seed + t_{df_p}^2 var_prompt)``, each part
    scaled by its own t quantile (exact when one part dominates; conservative in between, where
    a single Satterthwaite quantile covers too little with three seeds)."""
    q = 0.5 + level / 2

    def term(var: np.ndarray, df: np.ndarray) -> np.ndarray:
        var = np.asarray(var, dtype=float)
        return np.where(var > 0, stats.t.ppf(q, df) ** 2 * np.where(var > 0, var, 0.0), 0.0)

    return np.sqrt(term(parts["seed"], parts["df_seed"]) + term(parts["prompt"], parts["df_prompt"]))


def parts_interval(value: float, parts: dict[str, np.ndarray], level: float, null: float | None,
                    bounds: tuple[float, float] | None) -> Interval:
    """The interval of ``half_width`` around ``value``; the p-value against ``null`` is the largest
    ``1 - level`` whose interval still holds ``null`` (so a claim at 5% is exactly the 95% interval
    leaving ``null`` out)."""
    parts = {k: float(v) for k, v in parts.items()}
    se = float(np.sqrt(parts["seed"] + parts["prompt"]))
    if se == 0.0:
        lo = hi = value
        p = None if null is None else (1.0 if np.isclose(value, null) else 0.0)
        df = None
    else:
        half = float(half_width(parts, level))
        lo, hi = value - half, value + half
        p = None
        if null is not None:
            gap = abs(value - null)
            def excess(alpha: float) -> float:
                return float(half_width(parts, 1 - alpha)) - gap
            p = 1.0 if excess(1.0 - 1e-12) >= 0 else (
                0.0 if excess(1e-15) < 0 else float(optimize.brentq(excess, 1e-15, 1.0 - 1e-12, xtol=1e-15)))
        df = float(parts["seed"] + parts["prompt"]) ** 2 / (
            parts["seed"] ** 2 / parts["df_seed"] + parts["prompt"] ** 2 / parts["df_prompt"])
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Interval(float(value), float(lo), float(hi), se, df, p, null)


def crossed_interval(y: Sequence[Sequence[float]] | np.ndarray, level: float = LEVEL, null: float | None = None,
                     bounds: tuple[float, float] | None = None, shared_prompts: bool = True) -> Interval:
    """The t-interval of the mean of ``y[seed][prompt]`` (see the module and ``crossed_moments``)."""
    arr = np.asarray(y, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"y must be a table [seed][prompt] of equal-length rows, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("y holds a value that is not a finite number")
    parts = crossed_parts(arr, shared_prompts)
    return parts_interval(float(parts["mean"]), parts, level, null, bounds)


def t_interval(values: Sequence[float], level: float = LEVEL, null: float | None = None,
               bounds: tuple[float, float] | None = None) -> Interval:
    """Mean of per-seed ``values`` and the t-interval over them (``k - 1`` degrees of freedom).
    For a figure measured once per seed whose per-prompt values are not kept: it carries the seed
    spread (and the prompt noise only if each seed drew its own prompts). One value: no interval."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError("t_interval needs a non-empty list of numbers")
    if len(v) == 1:
        return Interval(float(v[0]), None, None, None, None, None, null)
    return _t_interval(float(v.mean()), float(v.var(ddof=1) / len(v)), len(v) - 1.0, level, null, bounds)


def outcome_table(per_seed: Sequence[Sequence[int]]) -> np.ndarray:
    """Outcomes (+1 / 0 / -1) as a table of win scores (1, 0.5, 0): the mean is the win rate."""
    lengths = {len(s) for s in per_seed}
    if not per_seed or len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every seed needs the same, non-zero number of outcomes, got {sorted(lengths)}")
    return (np.asarray(per_seed, dtype=float) + 1.0) / 2.0


def win_rate_interval(per_seed: Sequence[Sequence[int]], level: float = LEVEL,
                      shared_prompts: bool = True) -> Interval:
    """Win rate (ties half) over seeds and prompts, its interval and p-value against 0.5."""
    return crossed_interval(outcome_table(per_seed), level, 0.5, (0.0, 1.0), shared_prompts)


def decided_linear(outcomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Win share among decided pairs, ``R = wins / (wins + losses)``, of outcome tables
    ``[..., seed, prompt]`` (+1 / 0 / -1), and its linearisation per cell
    ``z = (win - R decided) / mean(decided)`` (the delta method for a ratio of means): the variance
    of ``R`` is that of the mean of ``z``. NaN where every pair tied."""
    o = np.asarray(outcomes, dtype=float)
    win, decided = (o > 0).astype(float), (o != 0).astype(float)
    d = decided.mean(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = win.mean(axis=(-2, -1)) / d
        z = (win - r[..., None, None] * decided) / d[..., None, None]
    return r, z


def _decided_linear(per_seed: Sequence[Sequence[int]]) -> tuple[float, np.ndarray] | None:
    r, z = decided_linear(np.asarray(per_seed, dtype=float))
    return None if not np.isfinite(r) else (float(r), z)


def decided_interval(per_seed: Sequence[Sequence[int]], level: float = LEVEL,
                     shared_prompts: bool = True) -> Interval | None:
    """Win rate over decided pairs only (ties left out), its interval and p-value against 0.5."""
    outcome_table(per_seed)
    lin = _decided_linear(per_seed)
    if lin is None:
        return None
    r, z = lin
    return parts_interval(r, crossed_parts(z, shared_prompts), level, 0.5, (0.0, 1.0))


def gap_interval(first: Sequence[Sequence[int]], second: Sequence[Sequence[int]], decided: bool = False,
                 level: float = LEVEL, shared_prompts: bool = True) -> Interval | None:
    """The win rate by the ``first`` judge minus that by the ``second``, paired per seed and prompt
    (the over-optimisation gap: preference model minus gold), with ties half or, ``decided``, over
    each judge's decided pairs only. Interval and p-value against 0."""
    a, b = outcome_table(first), outcome_table(second)
    if a.shape != b.shape:
        raise ValueError(f"the two judges' outcomes differ in shape: {a.shape} and {b.shape}")
    if not decided:
        return crossed_interval(a - b, level, 0.0, (-1.0, 1.0), shared_prompts)
    la, lb = _decided_linear(first), _decided_linear(second)
    if la is None or lb is None:
        return None
    return parts_interval(la[0] - lb[0], crossed_parts(la[1] - lb[1], shared_prompts), level, 0.0, (-1.0, 1.0))


def holm(pvalues: Sequence[float], alpha: float = 1 - LEVEL) -> list[float]:
    """Holm-adjusted p-values of a family of claims (``statsmodels``' ``multipletests``): a claim
    holds, with the family-wise error at most ``alpha``, where its adjusted p-value is below it."""
    if not len(pvalues):
        return []
    return [float(p) for p in multipletests(list(pvalues), alpha=alpha, method="holm")[1]]


def rank_intervals(names: Sequence[str], better: dict[tuple[str, str], bool]) -> dict[str, tuple[int, int]]:
    """Simultaneous rank intervals (rank 1 the best) from a family of corrected pairwise decisions:
    ``better[(a, b)]`` is True where ``a`` is shown better than ``b``. A name's best possible rank is
    one plus the number shown better than it, its worst the count minus those it is shown better
    than; with a family-wise error of 5% all intervals hold together with 95% probability."""
    out = {}
    for a in names:
        above = sum(better.get((b, a), False) for b in names if b != a)
        below = sum(better.get((a, b), False) for b in names if b != a)
        out[a] = (1 + above, len(names) - below)
    return out


def prompt_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """ONE ``(n_boot, n)`` matrix of resampled prompt indices, to apply to every seed and every
    policy judged on the same ``n`` prompts, so that a prompt drawn twice counts twice for all."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need at least one prompt and one resample, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def spearman_rows(x: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``x`` with every row of ``y`` (average ranks for ties; 0 for a
    constant row)."""
    rx = stats.rankdata(np.asarray(x, dtype=float))
    ry = stats.rankdata(np.asarray(y, dtype=float), axis=-1)
    rx, ry = rx - rx.mean(), ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ry * rx).sum(axis=-1) / np.where(den > 0, den, 1.0), 0.0)


def controllability(tags: Sequence[float], per_seed: Sequence[np.ndarray], level: float = LEVEL,
                    shared_prompts: bool = True) -> dict[str, Any]:
    """How well a tag steers the score (PAT's controllability, MOSS Fig. 8), from per-seed tables
    ``scores[tag, prompt]`` (every tag judged on the same prompts):

    - ``spearman``: the Spearman correlation of the tags with the mean score per tag (the paper's
      figure), mean over seeds, without an interval: the correlation of noisy means is biased
      towards 0 where the curve is flat, and no resampling interval of it covers reliably;
    - ``trend``: the paired per-prompt trend test, the mean over prompts and seeds of each prompt's
      Spearman correlation of score with tag (Page's trend statistic, rescaled), with its interval
      over seeds and prompts and the p-value against no trend (0)."""
    tables = [np.asarray(t, dtype=float) for t in per_seed]
    if not tables or any(t.ndim != 2 or t.shape[0] != len(tags) for t in tables):
        raise ValueError(f"every seed needs a table [tag][prompt] with {len(tags)} tags")
    n = {t.shape[1] for t in tables}
    if len(n) != 1 or n == {0}:
        raise ValueError(f"every seed needs the same, non-zero number of prompts per tag, got {sorted(n)}")
    rho = [float(spearman_rows(tags, t.mean(axis=-1))) for t in tables]
    per_prompt = [spearman_rows(tags, t.T) for t in tables]  # [seed][prompt]
    if len(tables) == 1 and len(per_prompt[0]) == 1:
        trend = t_interval([float(per_prompt[0][0])], null=0.0)
    else:
        trend = crossed_interval(per_prompt, level, 0.0, (-1.0, 1.0), shared_prompts)
    return {"spearman": {"value": sum(rho) / len(rho), "ci": None, "per_seed": rho}, "trend": trend.as_dict()}
