"""Best-of-n driver: SFT → preference model → the SFT model samples ``bon.n_max`` replies per
held-out prompt, the preference model scores them all, and best-of-n keeps the highest-scoring of
the first n, for each n of ``bon.ns``. ``+experiment=bon``.

The samples are one job of the evaluation-reply cache (each prompt repeated ``n_max`` times in a
row, with the evaluation's sampling settings), so a rerun samples nothing. Best-of-``n_max`` is the
method ``bon``, judged against the SFT model's own evaluation replies (the ones every method is
judged against) under the usual keys (``win_rate.<judge>.bon_vs_sft``). The curve
(``results["bon"]["curve"]``) puts each n's mean gold and preference-model score, and its win rates
against SFT, beside the analytic KL of best-of-n to the SFT model (``alignment.statistics.best_of_n``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from alignment.atomic import write_text
from alignment.statistics.best_of_n import analytic_kl, pick_groups
from alignment.statistics.winrate import outcomes, win_rate
from experiments.evaluation.equal_kl import bon_path, final_kls, job_at_kl, print_at_kl, sft_point
from experiments.evaluation.head_to_head import (
    Judged,
    head_to_head,
    judge_replies,
    method_metrics,
    method_results,
    pm_scores,
    samples,
)
from experiments.evaluation.replies import Job, generate_with
from experiments.evaluation.win_layout import win_entry
from experiments.reports.report import JUDGE_NAMES, plt, print_win_rates, save_png, win_table
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.stages.pm import pm_stage
from experiments.stages.sft import sft_stage

SAMPLES_JOB = "bon-samples"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _win(a: Sequence[float], b: Sequence[float], seed: int) -> dict[str, Any]:
    """A's win rate over B prompt by prompt, in the layout of ``results.json``'s win rates (no ``lc``)."""
    return win_entry(win_rate(outcomes(a, b), seed=seed))


def curve(ns: Sequence[int], n_max: int, texts: list[str], pm: list[float], gold: list[float] | None,
          sft_pm: list[float], sft_gold: list[float] | None, seed: int) -> list[dict[str, Any]]:
    """One point per n: the analytic KL, the picks' mean gold (world prompts only) and PM score, their
    win rates against SFT by each, and the mean number of distinct replies among the first n samples
    (repeats make the analytic KL an upper bound). ``texts``, ``pm``, ``gold``: every sample, the
    ``n_max`` of each prompt in a row."""
    points = []
    for n in ns:
        picks = pick_groups(pm, n_max, n)
        pm_picks = [pm[i] for i in picks]
        point: dict[str, Any] = {"n": n, "kl": analytic_kl(n), "pm": _mean(pm_picks), "gold": None,
                                 "distinct": _mean([len(set(texts[k:k + n])) for k in range(0, len(texts), n_max)]),
                                 "win_rate": {}}
        if gold is not None and sft_gold is not None:
            gold_picks = [gold[i] for i in picks]
            point["gold"] = _mean(gold_picks)
            point["win_rate"]["gold"] = _win(gold_picks, sft_gold, seed)
        point["win_rate"]["pm"] = _win(pm_picks, sft_pm, seed)
        points.append(point)
    return points


@dataclass
class Samples:
    """``n_max`` SFT samples per held-out prompt (each prompt's in a row), their preference-model
    scores, and best-of-``n_max``'s pick for each prompt."""

    n_max: int
    texts: list[str]
    pm: list[float]

    @property
    def best(self) -> list[str]:
        return [self.texts[i] for i in pick_groups(self.pm, self.n_max, self.n_max)]


def draw(ctx: RunContext, sft: Artifact, pm: Artifact) -> Samples:
    """The method's own work, in the cost span ``bon``: ``bon.n_max`` samples per held-out prompt
    from the SFT model (cached as one evaluation job), each scored by the preference model."""
    n_max = ctx.cfg.bon.n_max
    repeated = [p for p in ctx.test_prompts for _ in range(n_max)]
    with ctx.costs.span("bon"):
        with tqdm(total=len(repeated), desc="best-of-n samples") as bar:
            texts = generate_with(ctx, sft.path, {SAMPLES_JOB: Job(repeated)}, "policy", bar, stage="bon")[SAMPLES_JOB]
        scores = pm_scores(ctx, pm.path, sft.path, {SAMPLES_JOB: ([p.conversation() for p in repeated], texts)},
                           stage="bon")[SAMPLES_JOB]
    return Samples(n_max, texts, scores)


def summary(ctx: RunContext, drawn: Samples, judged: Judged, pm: Artifact, sft: Artifact) -> dict[str, Any]:
    """``results["bon"]``: the best-of-n curve over ``bon.ns`` against the SFT replies ``judged``
    holds (the preference model scores them here if the run's judges left it out)."""
    prompts = ctx.test_prompts
    sft_replies = judged.replies["sft"]
    sft_pm = judged.scores.get("pm", {}).get("sft")
    if sft_pm is None:  # the run's judges leave the PM out; the curve still reads it
        sft_pm = pm_scores(ctx, pm.path, sft.path, {"sft": ([p.conversation() for p in prompts], sft_replies)})["sft"]
    gold_all = sft_gold = None
    if ctx.on_world:
        repeated = [p for p in prompts for _ in range(drawn.n_max)]
        gold_all = [ctx.world.judge(p, t) for p, t in zip(repeated, drawn.texts)]
        sft_gold = [ctx.world.judge(p, r) for p, r in zip(prompts, sft_replies)]
    ns = sorted(set(ctx.cfg.bon.ns))
    points = curve(ns, drawn.n_max, drawn.texts, drawn.pm, gold_all, sft_pm, sft_gold, ctx.cfg.seed)
    for p in points:
        row = {"bon/n": p["n"], "bon/kl": p["kl"], "bon/pm": p["pm"], "bon/distinct": p["distinct"]}
        if p["gold"] is not None:
            row["bon/gold"] = p["gold"]
        row |= {f"bon/win_rate_{judge}": w["value"] for judge, w in p["win_rate"].items()}
        ctx.tracker.log(row, step=p["n"])
    return {"n_max": drawn.n_max, "ns": ns, "curve": points,
            "sft": {"pm": _mean(sft_pm), "gold": _mean(sft_gold) if sft_gold else None}}


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=bon``: the chain, then best-of-n of the SFT model's samples against SFT."""
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    prompts = ctx.test_prompts
    drawn = draw(ctx, sft, pm)
    with ctx.costs.span("eval"):
        sft_replies = generate_with(ctx, sft.path, {"sft": Job(prompts)}, "policy")["sft"]
        jobs = {"bon": Job(prompts), "sft": Job(prompts)}
        replies = {"bon": drawn.best, "sft": sft_replies}
        judged = judge_replies(ctx, jobs, replies, pm.path, sft.path, prompts, ("bon", "sft"), [("bon", "sft")])
        bon = summary(ctx, drawn, judged, pm, sft)
        # the path measured like every other method's points (the evaluation's curve above is not)
        frontier = {"bon_path": bon_path(ctx, sft.path, pm.path), "sft": sft_point(ctx, sft.path, pm.path)}
    wins = head_to_head(ctx, judged, [("bon", "sft")])
    results = {
        "pm": {"val_accuracy": pm.info["eval"]["val_accuracy"],
               "gold_agreement": pm.info["eval"].get("gold_agreement")},
        **method_results(ctx, judged, wins, ("bon", "sft")),
        "bon": bon,
        "frontier": frontier,
        "kl": {"final": final_kls(frontier, ctx.cfg.pat.inference_tag), "bound": ["bon"]},
        "at_kl": job_at_kl(frontier),
        "cost": ctx.costs.summary(),
        "artifacts": {"sft": str(sft.path), "pm": str(pm.path)},
        "cached": {"sft": sft.cached, "pm": pm.cached},
        "samples": samples(prompts, judged.replies, ("sft", "bon")),
    }
    flat = method_metrics(results)
    ctx.tracker.log(flat)
    ctx.tracker.summary(flat)
    images = write_report(ctx.run_dir, results)
    ctx.tracker.log_images(images)
    print_summary(results)
    return results


def curve_rows(r: dict[str, Any]) -> list[list[str]]:
    """The curve as table cells: n, KL, mean gold, mean PM, the win rates against SFT, distinct samples."""
    rows = []
    for p in r["bon"]["curve"]:
        wr = [f"{w['value']:.3f} [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}]" if (w := p["win_rate"].get(j)) else "n/a"
              for j in ("gold", "pm")]
        rows.append([str(p["n"]), f"{p['kl']:.3f}", "n/a" if p["gold"] is None else f"{p['gold']:.3f}",
                     f"{p['pm']:.3f}", *wr, f"{p['distinct']:.2f}"])
    return rows


CURVE_HEADER = ["n", "KL (nats)", "mean gold", "mean PM", "gold win rate vs SFT", "PM win rate vs SFT",
                "distinct samples"]


def print_summary(r: dict[str, Any]) -> None:
    b = r["bon"]
    print(f"\nBest-of-{b['n_max']} (preference model picks among SFT samples) vs SFT on held-out test prompts")
    print_win_rates(r)
    sft_gold = "n/a" if b["sft"]["gold"] is None else f"{b['sft']['gold']:.3f}"
    print(f"  best-of-n curve (SFT: mean gold {sft_gold}, mean PM {b['sft']['pm']:.3f}):")
    widths = [4, 10, 10, 9, 24, 24, 9]
    print("  " + "".join(f"{h.split(' vs')[0][:w - 1]:>{w}}" for h, w in zip(CURVE_HEADER, widths)))
    for row in curve_rows(r):
        print("  " + "".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    if "at_kl" in r:
        print_at_kl(r["at_kl"])


def curve_plot(r: dict[str, Any], path: Path) -> Path:
    """Mean gold score (world prompts) and mean PM score of the picks against the analytic KL, with
    the SFT model's own replies as a dotted line."""
    b = r["bon"]
    pts = b["curve"]
    kl = [p["kl"] for p in pts]
    panels = [("gold", JUDGE_NAMES["gold"])] if pts[0]["gold"] is not None else []
    panels.append(("pm", JUDGE_NAMES["pm"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels):
        ys = [p[key] for p in pts]
        ax.plot(kl, ys, marker="o", color="#264653", label="best-of-n")
        for p, x, y in zip(pts, kl, ys):
            ax.annotate(f"n={p['n']}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        if b["sft"][key] is not None:
            ax.axhline(b["sft"][key], color="#e76f51", ls=":", label="SFT replies")
        ax.set_xlabel("KL(best-of-n || SFT), analytic (nats)")
        ax.set_ylabel(f"mean {name} score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Best-of-n: score against KL")
    fig.tight_layout()
    return save_png(fig, path)


def write_report(run_dir: Path, r: dict[str, Any]) -> dict[str, Path]:
    """``report.md`` with the head-to-head table, the curve table and ``bon_curve.png``."""
    images = {"bon_curve": curve_plot(r, run_dir / "bon_curve.png")}
    b = r["bon"]
    lines = [f"# Best-of-{b['n_max']} vs SFT", "",
             f"The SFT model samples {b['n_max']} replies per held-out prompt; the preference model keeps the "
             f"best of the first n. Best-of-{b['n_max']} is judged against the SFT model's own replies.", "",
             *win_table(r), "", "## Best-of-n curve", "", "![best-of-n curve](bon_curve.png)", "",
             "| " + " | ".join(CURVE_HEADER) + " |", "|" + " --- |" * len(CURVE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in curve_rows(r)]
    sft_gold = "n/a" if b["sft"]["gold"] is None else f"{b['sft']['gold']:.3f}"
    lines += ["", f"SFT replies: mean gold {sft_gold}, mean PM {b['sft']['pm']:.3f}. KL is the analytic "
              "log n - (n-1)/n, exact when no two samples tie and an upper bound otherwise (see the distinct "
              "samples column).", "", "## Samples", ""]
    for s in r["samples"]:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- SFT: {s['sft']!r}", f"- best-of-{b['n_max']}: {s['bon']!r}", ""]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return images
