"""The words and colours of a sweep's report: each method's name and colour, how a pair and a
win rate are written, and which claim a win rate supports."""

from __future__ import annotations

from typing import Any

from experiments.reports.report import METHOD_NAMES
from experiments.reports.sweep import JUDGE_ORDER, METHODS, pairs_of

NAMES = METHOD_NAMES
COLORS = {"pat": "#2a9d8f", "ppo": "#e76f51", "sft": "#8d99ae", "dpo": "#6a4c93", "grpo": "#f4a261",
          "rloo": "#457b9d", "bon": "#e9c46a", "quark": "#264653"}
MARKERS = {"ppo": "*", "dpo": "D", "grpo": "P", "rloo": "X", "quark": "h"}
BASELINE = ("pat", "ppo")  # a sweep of these alone gets the report it always had
COST_LABELS = {"wall_s": "wall time (s)", "cpu_s": "CPU time (s)", "peak_rss_mb": "peak memory (MB)",
               "gpu_peak_mb": "peak GPU memory (MB)", "tokens_generated": "tokens generated",
               "param_updates": "parameter updates"}


def pair_label(key: str) -> str:
    a, b = key.split("_vs_")
    return f"{NAMES.get(a, a)} vs {NAMES.get(b, b)}"


def methods_of(r: dict[str, Any]) -> list[str]:
    """The methods an aggregated result holds (trained by a job or judged), in ``METHODS``' order."""
    keys = {p for d in r["win_rate"].values() for k in d for p in k.split("_vs_")}
    stages = {x["stage"] for x in r.get("runs", [])}
    return [m for m in METHODS if m in keys or m in stages]


def beyond_baseline(methods: list[str]) -> bool:
    return any(m not in BASELINE for m in methods)


def report_pairs(r: dict[str, Any]) -> list[tuple[str, str]]:
    return pairs_of(methods_of(r))


def headline(r: dict[str, Any]) -> str:
    """The judge the answer is read from: the gold judge where there is one (the world's prompts),
    else an independent judge (reward model, then LLM), else the run's own preference model."""
    return next((j for j in ("gold", "rm", "llm", "pm") if r["win_rate"].get(j)), "gold")


def judges(r: dict[str, Any]) -> list[str]:
    return [j for j in JUDGE_ORDER if r["win_rate"].get(j)]


def judged(w: dict[str, Any]) -> str:
    """'beats', 'is level with' or 'loses to': the claim the Holm-corrected p-value supports
    (``experiments.reports.sweep.win_rates``); older results without it: where the interval lies against 0.5."""
    if "claim" in w:
        return w["claim"]
    if not w.get("ci"):
        return "is level with"
    lo, hi = w["ci"]
    return "beats" if lo > 0.5 else "loses to" if hi < 0.5 else "is level with"


def ci(w: dict[str, Any], digits: int = 3, sign: str = "") -> str:
    """``[lo, hi]``, or ``(no interval)`` where the data carry none (one seed of a seed-level figure)."""
    if not w.get("ci"):
        return "(no interval)"
    return f"[{w['ci'][0]:{sign}.{digits}f}, {w['ci'][1]:{sign}.{digits}f}]"


def fmt(w: dict[str, Any]) -> str:
    return f"{w['value']:.3f} {ci(w)}"


def pvalue(w: dict[str, Any]) -> str:
    p = w.get("p_holm")
    return "" if p is None else (f"Holm-adjusted p = {p:.3f}" if p >= 0.001 else "Holm-adjusted p < 0.001")
