"""Reward-model over-optimisation curves (Gao, Schulman and Hilton, 2022, "Scaling laws for reward
model overoptimization"), fitted on a policy's path on the reward-KL plane.

With ``d = sqrt(KL)`` (KL to the initial policy, nats), a score ``R`` (the gold judge's or the
preference model's) follows::

    RL (PPO, GRPO, RLOO by iteration):  R(d) = R0 + d (alpha - beta log d)
    best-of-n (by n):                   R(d) = R0 + d (alpha - beta d)

Gao et al. write ``R(d) - R(0)``; the lab fits the offset ``R0`` too, since a training path does
not start exactly at KL 0. The fit is least squares (``scipy.optimize.curve_fit``); the report
gives alpha, beta, R0, R^2 and the KL where the fitted curve peaks (``exp(2 (alpha / beta - 1))``
for RL, ``(alpha / (2 beta))^2`` for best-of-n; None when beta <= 0: no peak). A path with fewer
points than ``MIN_POINTS`` is not fitted, and says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 5  # three parameters, and at least two points to judge the fit by
FORMS = ("rl", "bon")


def rl_curve(d: np.ndarray, r0: float, alpha: float, beta: float) -> np.ndarray:
    """``R0 + d (alpha - beta log d)``, with ``d log d`` taken as 0 at ``d = 0``."""
    d = np.asarray(d, dtype=float)
    safe = np.where(d > 0, d, 1.0)
    return r0 + d * alpha - beta * np.where(d > 0, d * np.log(safe), 0.0)


def bon_curve(d: np.ndarray, r0: float, alpha: float, beta: float) -> np.ndarray:
    """``R0 + d (alpha - beta d)``."""
    d = np.asarray(d, dtype=float)
    return r0 + d * (alpha - beta * d)


CURVES = {"rl": rl_curve, "bon": bon_curve}


def peak_kl(form: str, alpha: float, beta: float) -> float | None:
    """The KL where the fitted score is highest, or None when the curve has no peak (beta <= 0)."""
    if beta <= 0:
        return None
    d = math.exp(alpha / beta - 1.0) if form == "rl" else alpha / (2.0 * beta)
    return d * d if d > 0 and math.isfinite(d) else None


def fit(kl: Sequence[float], score: Sequence[float | None], form: str) -> dict[str, Any]:
    """The Gao et al. curve ``form`` (``rl`` or ``bon``) fitted to a path's points: ``{"form",
    "alpha", "beta", "r0", "r2", "peak_kl", "n"}``, or ``{"form", "fitted": False, "reason", "n"}``
    when the path is too short (or its KLs too few distinct) or the fit does not converge.
    Points with an unknown score are left out; a negative KL estimate is taken as 0."""
    if form not in FORMS:
        raise ValueError(f"form: {form!r}; choose one of {FORMS}")
    pts = [(max(float(k), 0.0), float(s)) for k, s in zip(kl, score)
           if s is not None and k is not None and math.isfinite(k) and math.isfinite(s)]
    n = len(pts)
    if n < MIN_POINTS or len({round(k, 12) for k, _ in pts}) < MIN_POINTS - 1:
        return {"form": form, "fitted": False, "n": n,
                "reason": f"path too short to fit: {n} points ({len({k for k, _ in pts})} distinct KLs), "
                          f"need at least {MIN_POINTS}"}
    d = np.sqrt(np.array([k for k, _ in pts]))
    y = np.array([s for _, s in pts])
    f = CURVES[form]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(f, d, y, p0=[y[np.argmin(d)], 0.0, 0.0], maxfev=20000)
    except (RuntimeError, OptimizeWarning, ValueError) as err:
        return {"form": form, "fitted": False, "n": n, "reason": f"the fit did not converge ({err})"}
    r0, alpha, beta = (float(p) for p in params)
    resid = y - f(d, r0, alpha, beta)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / total if total > 0 else None
    return {"form": form, "fitted": True, "n": n, "r0": r0, "alpha": alpha, "beta": beta, "r2": r2,
            "peak_kl": peak_kl(form, alpha, beta), "kl_range": [float(d.min() ** 2), float(d.max() ** 2)]}


def fitted_points(result: dict[str, Any], n: int = 100) -> tuple[list[float], list[float]]:
    """``(kl, score)`` of a fitted curve over the KLs it was fitted on, for drawing."""
    if not result.get("fitted"):
        return [], []
    lo, hi = (math.sqrt(x) for x in result["kl_range"])
    d = np.linspace(lo, hi, n)
    y = CURVES[result["form"]](d, result["r0"], result["alpha"], result["beta"])
    return [float(x) for x in d ** 2], [float(v) for v in y]
