"""The figures of a sweep's report: the summary, the win matrix, over-optimisation, the reward-KL
frontier with its fits, the learning curves, the cost and the timeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignment.statistics.scaling import fitted_points  # noqa: E402
from experiments.evaluation.equal_kl import SNAPSHOT_PATHS  # noqa: E402
from experiments.reports.frontier import FINAL_POINT, SAVED_PATH  # noqa: E402
from experiments.reports.report import JUDGE_NAMES, METHOD_NAMES, draw_win_tie_lose, save_png  # noqa: E402
from experiments.reports.sweep import COST_KEYS, METHODS  # noqa: E402
from experiments.reports.sweep_words import (  # noqa: E402
    COLORS,
    COST_LABELS,
    MARKERS,
    NAMES,
    headline,
    judges,
    methods_of,
    pair_label,
    report_pairs,
)


def summary_plot(r: dict[str, Any], path: Path) -> Path:
    """The answer at a glance: the headline judge's win rates (left) and each method's cost (right)."""
    judge = headline(r)
    gold = r["win_rate"].get(judge, {})
    rows = [(pair_label(k), gold[k]) for k in (f"{a}_vs_{b}" for a, b in report_pairs(r)) if k in gold]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 0.8 * max(len(rows), 2) + 2.2),
                                 gridspec_kw={"width_ratios": [3, 2], "wspace": 0.95})
    if rows:
        draw_win_tie_lose(ax, rows, f"{JUDGE_NAMES[judge].capitalize()}, {len(r['seeds'])} seed(s): "
                                    "95% intervals over seeds and prompts")
    methods = [m for m in ("sft", "pm", *METHODS) if m in r["cost"]]
    labels = {**METHOD_NAMES, "sft": "SFT (shared)", "pm": "pref. model (shared)"}
    cpu = [r["cost"][m]["cpu_s"] / 60 for m in methods]
    wall = [r["cost"][m]["wall_s"] / 60 for m in methods]
    y = range(len(methods))
    bx.barh([i - 0.2 for i in y], cpu, height=0.4, color=[COLORS.get(m, "#bbbbbb") for m in methods],
            label="CPU-minutes")
    bx.barh([i + 0.2 for i in y], wall, height=0.4, color="none", edgecolor="black", label="wall minutes")
    for i, (c_, w_) in enumerate(zip(cpu, wall)):
        bx.text(max(c_, w_) * 1.02, i, f"{c_:.1f} CPU-min / {w_:.1f} min", va="center", fontsize=8)
    bx.set_yticks(list(y), [labels[m] for m in methods])
    bx.invert_yaxis()
    bx.set_xlim(0, max(cpu + wall + [1e-9]) * 1.6)
    bx.set_title("Cost of each stage (mean over seeds)")
    bx.legend(loc="lower right", fontsize=8, frameon=False)
    return save_png(fig, path)


def win_matrix(r: dict[str, Any], judge: str, policies: list[str]) -> np.ndarray:
    """``m[i, j]``: the win rate of ``policies[i]`` over ``policies[j]`` by ``judge`` (ties count
    half, so a pair judged one way round gives the other as one minus it); NaN where not judged."""
    m = np.full((len(policies), len(policies)), np.nan)
    at = {p: i for i, p in enumerate(policies)}
    for key, w in r["win_rate"].get(judge, {}).items():
        a, b = key.split("_vs_")
        if a in at and b in at:
            m[at[a], at[b]], m[at[b], at[a]] = w["value"], 1.0 - w["value"]
    return m


def win_matrix_plot(r: dict[str, Any], path: Path) -> Path:
    """A heatmap per judge over every method and SFT: row a, column b, cell the win rate of a over b."""
    names = judges(r) or ["gold"]
    policies = [*methods_of(r), "sft"]
    k = len(policies)
    fig, axes = plt.subplots(1, len(names), figsize=((0.9 * k + 2.2) * len(names), 0.8 * k + 1.6), squeeze=False)
    im = None
    for ax, judge in zip(axes[0], names):
        m = win_matrix(r, judge, policies)
        im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(m[i, j] - 0.5) > 0.3 else "black")
        ax.set_xticks(range(k), [NAMES.get(p, p) for p in policies])
        ax.set_yticks(range(k), [NAMES.get(p, p) for p in policies])
        ax.set_xlabel("against (b)")
        ax.set_ylabel("win rate of (a)")
        ax.set_title(f"Judged by the {JUDGE_NAMES[judge]}", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="win rate of row over column")
    return save_png(fig, path)


def overoptimisation_plot(r: dict[str, Any], path: Path) -> Path:
    """Win rate against SFT by every judge, per method (the gold judge's and the preference model's gap
    is the over-optimisation)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = judges(r)
    methods = [m for m in METHODS if any(f"{m}_vs_sft" in r["win_rate"][j] for j in names)]
    colors = {"gold": "#264653", "pm": "#e9c46a", "rm": "#2a9d8f", "llm": "#e76f51"}
    width = 0.7 / max(len(names), 1)
    for j, judge in enumerate(names):
        ws = [r["win_rate"][judge].get(f"{m}_vs_sft") for m in methods]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(methods))]
        vals = [w["value"] if w else math.nan for w in ws]
        errs = [[w["value"] - w["ci"][0] if w else 0 for w in ws], [w["ci"][1] - w["value"] if w else 0 for w in ws]]
        ax.bar(xs, vals, width=width, color=colors[judge], yerr=errs, capsize=4, label=JUDGE_NAMES[judge])
    for i, m in enumerate(methods):
        gap = r["overoptimisation"].get(m)
        if gap:
            ax.text(i, 1.02, f"gap {gap['value']:+.3f}", ha="center", fontsize=9)
    ax.set_xticks(range(len(methods)), [f"{NAMES[m]} vs SFT" for m in methods])
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("win rate")
    ax.set_title("Reward over-optimisation: preference-model minus gold win rate")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def trailing_mean(values: list[float], k: int) -> list[float]:
    """Mean of each value and the ``k - 1`` before it (fewer at the start)."""
    return [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]


def frontier_plot(r: dict[str, Any], path: Path) -> Path:
    """Reward against KL to SFT: the PPO loop's training paths (PPO, GRPO, RLOO) and Quark's path by
    round, every method's final policy, PAT's tag sweep and the best-of-n curve."""
    f = r["frontier"]
    panels = [("pm", "preference-model score")]
    if any(p.get("gold") is not None for p in f["pat"] + f["ppo"] + f.get("bon", [])
           + [q for m in FINAL_POINT[1:] for q in f.get(m, [])]):
        panels.insert(0, ("gold", "gold score"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    f_fits = f.get("fits", {})
    for ax, key, label in ((ax, k, lb) for ax, (k, lb) in zip(axes, panels)):
        for m in SAVED_PATH:
            traj = [p for p in f.get(f"{m}_training", []) if p.get(key) is not None]
            if traj:
                k = max(1, len(traj) // 10)  # moving average over ~10% of the iterations
                ax.plot(trailing_mean([p["kl"] for p in traj], k), trailing_mean([p[key] for p in traj], k),
                        color=COLORS[m], alpha=0.3, lw=1.0,
                        label=f"{NAMES[m]} training rollouts (its own estimate, train prompts)")
            measured = [p for p in f.get(f"{m}_path", []) if p.get(key) is not None]
            if measured:
                ax.plot([p["kl"] for p in measured], [p[key] for p in measured], marker=".", color=COLORS[m],
                        lw=1.6, label=f"{NAMES[m]} saved policies by {SNAPSHOT_PATHS[m]} (measured)")
        if f["ppo"]:
            ax.scatter([p["kl"] for p in f["ppo"]], [p[key] for p in f["ppo"]], marker="*", s=140,
                       color=COLORS["ppo"], edgecolor="black", zorder=3, label="PPO final policy (per seed)")
        if f["pat"]:
            ax.plot([p["kl"] for p in f["pat"]], [p[key] for p in f["pat"]], marker="o", color=COLORS["pat"],
                    label="PAT, one point per tag")
            for p in f["pat"]:
                ax.annotate(str(p["tag"]), (p["kl"], p[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for m in FINAL_POINT[1:]:
            pts = [p for p in f.get(m, []) if p.get(key) is not None]
            if pts:
                ax.scatter([p["kl"] for p in pts], [p[key] for p in pts], marker=MARKERS[m], s=90, color=COLORS[m],
                           edgecolor="black", zorder=3, label=f"{NAMES[m]} final policy (per seed)")
        bon = [p for p in f.get("bon", []) if p.get(key) is not None]
        if bon:
            ax.plot([p["kl"] for p in bon], [p[key] for p in bon], marker="s", color=COLORS["bon"],
                    label="best-of-n, one point per n (analytic KL bound)")
            for p in bon:
                ax.annotate(f"n={p['n']}", (p["kl"], p[key]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        drawn = [p for p in f_fits if not (p.endswith("_training") and p.removesuffix("_training") + "_path" in f_fits)]
        for name, fitted in ((p, f_fits[p][key]) for p in drawn if f_fits[p].get(key, {}).get("fitted")):
            m = "bon" if name == "bon" else name.removesuffix("_training").removesuffix("_path")
            xs, ys = fitted_points(fitted)
            r2 = f" (R^2 {fitted['r2']:.2f})" if fitted["r2"] is not None else ""
            ax.plot(xs, ys, ls="--", lw=1.2, color=COLORS[m], label=f"{NAMES[m]} Gao et al. fit{r2}")
            peak = fitted["peak_kl"]
            if peak is not None and fitted["kl_range"][0] <= peak <= fitted["kl_range"][1]:
                ax.axvline(peak, color=COLORS[m], ls=":", lw=0.8)
        ax.set_xlabel("KL to the SFT model (nats per response)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Reward-KL frontier: points measured alike (control prompts, temperature-1 samples, k1 KL);\n"
                 "best-of-n's KL is its analytic bound; faint lines: training rollouts, each method's own estimate",
                 fontsize=9)
    return save_png(fig, path)


def curves_plot(r: dict[str, Any], path: Path) -> Path:
    panels = [(stage, key) for stage, d in r["curves"].items() for key in d]  # stage: the method that logged it
    cols = 3
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3 * rows), squeeze=False)
    for ax, (stage, key) in zip(axes.flat, panels):
        for seed, pts in r["curves"][stage][key].items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, alpha=0.8, label=f"seed {seed}")
        ax.set_title(f"{NAMES.get(stage, stage.upper())}: {key}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def cost_plot(r: dict[str, Any], path: Path) -> Path:
    stages = list(r["cost"])
    keys = [k for k in COST_KEYS if any(r["cost"][s][k] for s in stages)] or ["wall_s"]  # all cached: empty bars
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 0.45 * len(stages) + 1.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        vals = [r["cost"][s][key] for s in stages]
        ax.barh(range(len(stages)), vals, color=[COLORS.get(s, "#bbbbbb") for s in stages])
        ax.set_yticks(range(len(stages)), stages if ax is axes[0][0] else [""] * len(stages))
        ax.invert_yaxis()
        ax.set_title(COST_LABELS[key], fontsize=9)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    fig.tight_layout()
    return save_png(fig, path)


def timeline_plot(cost: dict[str, dict[str, Any]], path: Path) -> Path:
    """A Gantt chart of the run's spans (stages that ran now; cached ones are absent)."""
    spans = sorted(((n, c) for n, c in cost.items() if not c.get("cached") and "start_s" in c),
                   key=lambda kv: kv[1]["start_s"])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(spans) + 1.2))
    for i, (name, c) in enumerate(spans):
        ax.barh(i, c["end_s"] - c["start_s"], left=c["start_s"], color=COLORS.get(name, "#8d99ae"))
        ax.text(c["end_s"], i, f" {c['wall_s']:.0f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(spans)), [n for n, _ in spans])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started")
    ax.set_title("Timeline of the run's stages")
    return save_png(fig, path)
