"""The sweep report: "which method, at what cost". ``report.md``, PNGs and ``results.json`` in
the sweep dir, built from its jobs (``experiments/reports/sweep.py``) and logged to W&B.

It is written when a multirun ends (``experiments/reports/callbacks.py``), by ``+experiment=report
sweep_dir=...``, and by ``+experiment=compare`` for its own run dir. The first figure,
``summary.png``, carries the answer: gold-judge win rates with intervals, and what each
method cost.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from alignment.atomic import write_json, write_text  # noqa: E402
from experiments.evaluation.equal_kl import (  # noqa: E402
    SNAPSHOT_PATHS,  # noqa: E402
    at_kl_markdown,
    at_kl_sentences,
)
from experiments.reports.frontier import FINAL_POINT, SAVED_PATH, TRAINING_PATH  # noqa: E402
from experiments.reports.report import JUDGE_NAMES  # noqa: E402
from experiments.reports.runs import by_variant, load_runs  # noqa: E402
from experiments.reports.sweep import COST_KEYS, METHODS, aggregate, pairs_of  # noqa: E402
from experiments.reports.sweep_plots import (  # noqa: E402
    cost_plot,
    curves_plot,
    frontier_plot,
    overoptimisation_plot,
    summary_plot,
    win_matrix_plot,
)
from experiments.reports.sweep_words import (  # noqa: E402
    BASELINE,
    COST_LABELS,
    NAMES,
    beyond_baseline,
    ci,
    fmt,
    headline,
    judged,
    judges,
    methods_of,
    pair_label,
    pvalue,
)


def verdict(r: dict[str, Any]) -> list[str]:
    """Plain sentences: the methods ranked by win rate against SFT, each method against SFT and each
    other on the headline judge, which methods do not beat SFT, and the cost."""
    judge = headline(r)
    gold = r["win_rate"].get(judge, {})
    n = len(r["seeds"])
    methods = methods_of(r)
    out = []
    ranked = sorted(((m, gold[f"{m}_vs_sft"]) for m in methods if f"{m}_vs_sft" in gold),
                    key=lambda mw: -mw[1]["value"])  # stable: ties keep METHODS' order
    ranks = {row["method"]: row["rank"] for row in r.get("ranking", {}).get(judge, [])}
    if ranked:
        def rank(m: str) -> str:
            lo, hi = ranks.get(m, (None, None))
            return "" if lo is None else f", rank {lo}" if lo == hi else f", rank {lo}-{hi}"

        out.append(f"Ranking by win rate against SFT on the {JUDGE_NAMES[judge]} (95% intervals over seeds and "
                   "prompts; rank intervals hold together at 95%, from Holm-corrected differences): "
                   + ", ".join(f"{NAMES[m]} {fmt(w)}{rank(m)}" for m, w in ranked) + ".")
    on_base = sorted(((m, gold[f"{m}_vs_base"]) for m in ("sft", *methods) if f"{m}_vs_base" in gold),
                     key=lambda mw: -mw[1]["value"])
    if on_base:  # a pretrained model: did training help at all?
        out.append(f"Ranking by win rate against the untrained pretrained model (base) on the {JUDGE_NAMES[judge]}: "
                   + ", ".join(f"{NAMES.get(m, m.upper())} {fmt(w)}" for m, w in on_base) + ".")
    for key in (f"{a}_vs_{b}" for a, b in pairs_of(methods)):
        if key in gold:
            a, b = key.split("_vs_")
            lc = f" (length-controlled {fmt(gold[key]['lc'])})" if "lc" in gold[key] and judge != "gold" else ""
            p = pvalue(gold[key])
            out.append(f"On the {JUDGE_NAMES[judge]}, **{NAMES[a]} {judged(gold[key])} {NAMES[b]}**: win rate "
                       f"{fmt(gold[key])}{lc} over {n} seed{'s' if n > 1 else ''}{'; ' + p if p else ''}.")
    if beyond_baseline(methods):
        out += [f"**{NAMES[m]} is not shown to beat SFT** on the {JUDGE_NAMES[judge]}: win rate {fmt(w)}"
                + (f", {pvalue(w)} over the judge's {len(gold)} pairs." if pvalue(w) else ".")
                for m, w in ranked if judged(w) != "beats"]
    if r.get("at_kl"):  # at equal KL, as well as at the end
        out += at_kl_sentences(r["at_kl"], NAMES)
    c = r["cost"]
    if "pat" in c and "ppo" in c:
        pat, ppo = c["pat"], c["ppo"]
        ratio = ppo["cpu_s"] / max(pat["cpu_s"], 1e-9)
        out.append(f"Cost of the method's own stage (SFT and the preference model are shared): PAT "
                   f"{pat['cpu_s'] / 60:.1f} CPU-min in {pat['wall_s'] / 60:.1f} min, PPO {ppo['cpu_s'] / 60:.1f} "
                   f"CPU-min in {ppo['wall_s'] / 60:.1f} min, so PPO costs **{ratio:.1f}x** PAT's CPU time. "
                   f"PPO samples "
                   f"{ppo['tokens_generated']:,.0f} tokens to train, PAT {pat['tokens_generated']:,.0f}; PPO keeps "
                   f"four models in memory ({ppo['peak_rss_mb']:,.0f} MB against {pat['peak_rss_mb']:,.0f} MB).")
    if beyond_baseline(methods) and any(m in c for m in methods):
        out.append("Cost of each method's own stage (mean over seeds): " + ", ".join(
            f"{NAMES[m]} {c[m]['cpu_s'] / 60:.1f} CPU-min in {c[m]['wall_s'] / 60:.1f} min, "
            f"{c[m]['tokens_generated']:,.0f} tokens sampled" for m in methods if m in c) + ".")
    return out


def markdown(r: dict[str, Any]) -> str:
    methods = methods_of(r)
    title = " vs ".join(NAMES[m] for m in (methods if beyond_baseline(methods) else BASELINE))
    lines = [f"# Which method, at what cost: {title} vs SFT", "", *verdict(r), "", "![summary](summary.png)", "",
             "## Win / tie / lose", "",
             "95% intervals over seeds and prompts: the seeds are judged on the same test prompts, so the "
             "prompts' part of the uncertainty does not shrink with more seeds; the seeds' part is a t-term over "
             "the seed means (see docs/statistics.md). A tie is an equal score; ties count half. *Decided* is the "
             "win rate over the pairs that did not tie. A claim (beats / loses to) needs a Holm-adjusted p-value "
             "below 0.05 over all pairs of the judge.", "",
             "| pair | judge | win | tie | lose | win rate | 95% interval | decided | Holm p | claim | per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for judge in judges(r):
        for key, w in r["win_rate"][judge].items():
            per = ", ".join(f"{s}: {v:.3f}" for s, v in w["per_seed"].items())
            dec = fmt(w["decided"]) if w.get("decided") else "n/a"
            hp = "n/a" if w.get("p_holm") is None else f"{w['p_holm']:.3f}"
            lines.append(f"| {pair_label(key)} | {JUDGE_NAMES[judge]} | {w['win']:.2f} | {w['tie']:.2f} | "
                         f"{w['lose']:.2f} | **{w['value']:.3f}** | {ci(w)} | {dec} | {hp} | {judged(w)} | {per} |")
    lc = [(judge, key, w) for judge in judges(r) for key, w in r["win_rate"][judge].items() if "lc" in w]
    if lc:
        lines += ["", "## Length", "", "Judges tend to prefer longer replies. Mean reply length in tokens: "
                  + ", ".join(f"{NAMES[p]} {v['value']:.1f}" for p, v in r.get("length", {}).items())
                  + ". The length-controlled win rate is what a logistic regression of the outcome on the length "
                  "difference predicts at equal length (AlpacaEval's correction; the seeds pooled, its "
                  "interval resampling each prompt with all its seeds, plus the spread of the seeds' own).", "",
                  "| pair | judge | win rate | length-controlled | 95% interval |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {pair_label(key)} | {JUDGE_NAMES[judge]} | {w['value']:.3f} | **{w['lc']['value']:.3f}** | "
                  f"[{w['lc']['ci'][0]:.3f}, {w['lc']['ci'][1]:.3f}] |" for judge, key, w in lc]
    lines += ["", "![win matrix](win_matrix.png)", "", *tool_use_markdown(r), "## Reward over-optimisation", "",
              "Preference-model win rate against SFT minus the gold judge's, paired per seed and prompt. A positive "
              "gap means the method pleases the reward model more than it improves true quality. The gold judge "
              "ties far more often than the preference model, and a tie counts half, which pulls its win rate "
              "towards 0.5: the gap over decided pairs only (ties left out of each judge's rate) separates gaming "
              "from the judges' resolution.", "",
              "| method | gap, ties half | 95% interval | gap, decided pairs | 95% interval | gold ties | PM ties |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, g in r["overoptimisation"].items():
        d = g.get("decided")
        dec = f"{d['value']:+.3f} | {ci(d, sign='+')}" if d else "n/a | n/a"
        ties = f"{g['tie_gold']:.2f} | {g['tie_pm']:.2f}" if "tie_gold" in g else "- | -"
        lines.append(f"| {NAMES[m]} | {g['value']:+.3f} | {ci(g, sign='+')} | {dec} | {ties} |")
    lines += ["", "![over-optimisation](overoptimisation.png)", "", "## Reward-KL frontier", "",
              "Every point is measured alike: the first `pat.control_prompts` held-out prompts, replies sampled "
              "at temperature 1 with no top-p (as PPO trains), the KL to the SFT model the mean over replies of "
              "the summed log-ratio of the sampled tokens (k1). PAT: one point per inference tag; PPO, GRPO, "
              "RLOO: the policies saved along training and the final one; Quark: each round's policy (round 1 is "
              "PAT's model) at PAT's inference tag; DPO: its final policy; best-of-n: one "
              "point per n on the same prompts and sampler, whose KL is the analytic bound log n - (n-1)/n, not "
              "an estimate. The faint lines of the figure are the training rollouts' own KL estimates (training "
              "prompts; GRPO's a k3 term), not comparable with the points.",
              "", "| policy | KL | gold | preference model |", "| --- | --- | --- | --- |"]
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for p in r["frontier"]["pat"]:
        lines.append(f"| PAT `<quality: {p['tag']}>` | {p['kl']:.2f} | {num(p['gold'])} | {p['pm']:.3f} |")
    for p in r["frontier"]["ppo"]:
        lines.append(f"| PPO final, seed {p['seed']} | {p['kl']:.2f} | {num(p['gold'])} | {p['pm']:.3f} |")
    for m in FINAL_POINT[1:]:
        for p in r["frontier"].get(m, []):
            lines.append(f"| {NAMES[m]} final, seed {p['seed']} | {p['kl']:.2f} | {num(p['gold'])} | {num(p['pm'])} |")
    for m in SAVED_PATH:
        for p in r["frontier"].get(f"{m}_path", [])[1:-1]:
            after = f"round {p['step']}" if SNAPSHOT_PATHS[m] == "round" else f"after {p['step']} iterations"
            lines.append(f"| {NAMES[m]} {after} (mean of {p['seeds']} seeds) | {p['kl']:.2f} | "
                         f"{num(p['gold'])} | {num(p['pm'])} |")
    for p in r["frontier"].get("bon", []):
        lines.append(f"| best-of-{p['n']} | {p['kl']:.2f} (bound) | {num(p['gold'])} | {num(p['pm'])} |")
    lines += fits_markdown(r)
    if r.get("at_kl"):
        lines += ["", "## At equal KL", "",
                  "Each method's path (PPO, GRPO, RLOO by iteration and Quark by round, from the SFT model; PAT "
                  "by tag; best-of-n by n) read at fixed KL budgets: linear interpolation on the first segment "
                  "that reaches the budget, never extrapolated. The win rate is against the SFT model's own "
                  "samples of the same prompts (gold judge, ties half); intervals are t-intervals over seeds. A "
                  "method whose path does not reach a budget in every seed has no value there.", "",
                  *at_kl_sentences(r["at_kl"], NAMES), "", *at_kl_markdown(r["at_kl"], NAMES)]
    lines += ["", "![frontier](frontier.png)", "", "## Learning curves", "", "![learning curves](learning_curves.png)",
              "", "## Cost", "", "Mean over seeds of what each stage cost when it was made (a reused artifact "
              "counts at the cost recorded when it was built). CPU time sums the actors' processes and the "
              "driver; peak memory is the largest sum of the actors' peak resident memory over actors alive "
              "at the same time; parameter updates are optimizer steps times trainable parameters.", "",
              "| stage | " + " | ".join(COST_LABELS[k] for k in COST_KEYS) + " |",
              "| --- |" + " --- |" * len(COST_KEYS)]
    for stage, c in r["cost"].items():
        lines.append(f"| {stage} | " + " | ".join(f"{c[k]:,.1f}" if k.endswith("_s") else f"{c[k]:,.0f}"
                                                  for k in COST_KEYS) + " |")
    lines += ["", "![cost](cost.png)", "", "## Other figures", "",
              "Intervals of figures measured once per seed (the preference model's accuracy, the final KL) are "
              "t-intervals over the seeds; with one seed there is none.", ""]
    if "pm" in r:
        lines.append(f"- preference-model validation accuracy: {fmt(r['pm']['val_accuracy'])}")
    c = r.get("controllability")
    if c:
        by = JUDGE_NAMES[c.get("judge", "gold")]
        lines.append(f"- PAT controllability (by the {by}): Spearman of tag and mean score "
                     f"{c['spearman']['value']:.3f} (mean over seeds; no interval: the correlation of noisy means "
                     "is biased where the curve is flat)"
                     + (f"; paired per-prompt trend (mean per-prompt Spearman) {fmt(c['trend'])}, "
                        f"p = {c['trend']['p']:.3g} against no trend"
                        if c.get("trend") and c["trend"].get("p") is not None else ""))
    kl = r.get("kl", {})
    for m, v in kl.get("final", {}).items():
        how = ("the analytic bound at the largest n" if m in kl.get("bound", [])
               else "measured like every method: control prompts, temperature-1 samples, k1")
        lines.append(f"- {NAMES[m]} final KL to the SFT model ({how}): {fmt(v)}")
    for m, v in kl.get("training_final", {}).items():
        lines.append(f"- {NAMES[m]} KL at the last iteration by its own estimator on its training rollouts "
                     f"(not comparable across methods): {fmt(v)}")
    for p, v in r.get("gold", {}).items():
        lines.append(f"- mean gold score of {NAMES[p]}: {fmt(v)}")
    lines += [f"- sum of the jobs' wall times: {r['wall_seconds']:.0f} s", "", "## Runs", ""]
    lines += [f"- `{x['path']}`: {x['stage']}, seed {x['seed']}" for x in r["runs"]]
    return "\n".join(lines) + "\n"


def fits_markdown(r: dict[str, Any]) -> list[str]:
    """The Gao et al. (2022) over-optimisation fits of the frontier's paths (``frontier.fits``)."""
    fits = r["frontier"].get("fits", {})
    if not fits:
        return []
    names = {f"{m}_training": f"{NAMES[m]} training rollouts" for m in TRAINING_PATH} | {
        f"{m}_path": f"{NAMES[m]} saved policies (measured)" for m in SAVED_PATH} | {"bon": "best-of-n"}
    lines = ["", "Over-optimisation fits (Gao et al. 2022), with d = sqrt(KL): R(d) = R0 + d (alpha - beta log d) "
             "for the RL training paths, R0 + d (alpha - beta d) for best-of-n; the peak is the KL where the fitted "
             "score is highest (none when beta <= 0). Drawn dashed on the frontier.", "",
             "| path | score | alpha | beta | R^2 | KL at the peak | points |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for path, by_score in fits.items():
        for score, f in by_score.items():
            label = f"| {names.get(path, path)} | {'gold' if score == 'gold' else 'preference model'} |"
            if not f.get("fitted"):
                lines.append(f"{label} not fitted: {f['reason']} | | | | {f['n']} |")
                continue
            peak = "none" if f["peak_kl"] is None else f"{f['peak_kl']:.2f}"
            r2 = "n/a" if f["r2"] is None else f"{f['r2']:.2f}"
            lines.append(f"{label} {f['alpha']:.3f} | {f['beta']:.3f} | {r2} | {peak} | {f['n']} |")
    return lines


def tool_use_markdown(r: dict[str, Any]) -> list[str]:
    """The tool-use section of a sweep (``results.tool_use``), seed means [95% interval]; empty
    when no request asked for a tool."""
    t = r.get("tool_use")
    if not t:
        return []

    def cell(v: dict[str, Any] | None) -> str:
        return fmt(v) if v else "-"

    how = ("95% interval over seeds and prompts" if t.get("per_prompt") else
           "95% interval over seeds; the win rates add each seed's interval over prompts")
    lines = ["## Tool use", "", f"{t['n']} held-out requests per seed ask for a tool (calculator, equation "
             f"solver, search); means [{how}].", "",
             "| policy | calls the tool | gold on tool requests | gold on the others |", "| --- | --- | --- | --- |"]
    lines += [f"| {NAMES.get(p, p)} | {cell(t['share'][p])} | {cell(t['gold'][p])} | {cell(t['gold_other'][p])} |"
              for p in t["share"]]
    lines += ["", "| pair | gold win rate on tool requests | on the others |", "| --- | --- | --- |"]
    lines += [f"| {pair_label(k)} | {cell(v)} | {cell(t['win_rate_other'].get(k))} |" for k, v in t["win_rate"].items()]
    return [*lines, ""]


def write_report(out_dir: Path, r: dict[str, Any]) -> dict[str, Path]:
    """``report.md`` and the PNGs for aggregated results ``r``; returns the images."""
    images = {"summary": summary_plot(r, out_dir / "summary.png"),
              "win_matrix": win_matrix_plot(r, out_dir / "win_matrix.png"),
              "overoptimisation": overoptimisation_plot(r, out_dir / "overoptimisation.png"),
              "frontier": frontier_plot(r, out_dir / "frontier.png"),
              "learning_curves": curves_plot(r, out_dir / "learning_curves.png"),
              "cost": cost_plot(r, out_dir / "cost.png")}
    write_text(out_dir / "report.md", markdown(r))
    return images


def variant_dir(label: str) -> str:
    """A directory name for a knob-sweep variant: ``algo.beta=0.05 algo.clip=0.1`` gives
    ``algo.beta=0.05_algo.clip=0.1``."""
    return re.sub(r"[^A-Za-z0-9._=,-]+", "_", label).strip("_") or "default"


def variants_markdown(variants: dict[str, dict[str, Any]]) -> str:
    """The index of a knob sweep: each variant's headline figures, and a link to its own report."""
    methods = [m for m in METHODS if any(m in methods_of(r) for r in variants.values())]
    pairs = pairs_of(methods if beyond_baseline(methods) else BASELINE)
    lines = ["# Sweep over knobs: one report per setting", "",
             "The jobs differ in more than method and seed, so each setting has its own report (methods "
             "paired and seeds averaged within it). Win rates of the headline judge (the gold judge on the "
             "world's prompts), mean over seeds [95% interval].", "",
             "| setting | seeds | " + " | ".join(pair_label(f"{a}_vs_{b}") for a, b in pairs)
             + " | final KL (own estimator) | PAT Spearman | PM val accuracy | report |",
             "| --- | --- |" + " --- |" * (len(pairs) + 4)]
    for label, r in variants.items():
        gold = r["win_rate"].get(headline(r), {})
        cells = [fmt(gold[f"{a}_vs_{b}"]) if f"{a}_vs_{b}" in gold else "" for a, b in pairs]
        kl = ", ".join(f"{NAMES[m]} {v['value']:.3f}" for m, v in r.get("kl", {}).get("final", {}).items())
        extra = [kl] + [f"{r[k][sub]['value']:.3f}" if k in r else "" for k, sub in
                        (("controllability", "spearman"), ("pm", "val_accuracy"))]
        link = f"variants/{variant_dir(label)}/report.md"
        lines.append(f"| `{label}` | {len(r['seeds'])} | " + " | ".join(cells + extra) + f" | [report]({link}) |")
    return "\n".join(lines) + "\n"


def build(sweep_dir: str | Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read the sweep's jobs and write ``results.json``, ``report.md`` and the PNGs into it.
    A sweep over knobs (jobs differing in more than method and seed) gets one such report per
    setting under ``variants/<setting>/``, and an index ``report.md`` and ``results.json``
    (``{"variants": {setting: results}}``) in the sweep dir. Returns the results and the images."""
    sweep_dir = Path(sweep_dir)
    groups = by_variant(load_runs(sweep_dir))
    if len(groups) == 1:
        r = aggregate(next(iter(groups.values())))
        images = write_report(sweep_dir, r)
        write_json(sweep_dir / "results.json", r)
        return r, images
    variants, images = {}, {}
    for label, runs in groups.items():
        out = sweep_dir / "variants" / variant_dir(label)
        out.mkdir(parents=True, exist_ok=True)
        variants[label] = aggregate(runs)
        images |= {f"{variant_dir(label)}/{k}": v for k, v in write_report(out, variants[label]).items()}
        write_json(out / "results.json", variants[label])
    r = {"seeds": sorted({s for v in variants.values() for s in v["seeds"]}), "variants": variants}
    write_text(sweep_dir / "report.md", variants_markdown(variants))
    write_json(sweep_dir / "results.json", r)
    return r, images


def settings(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``build``'s results per knob setting: ``{"": r}`` for a sweep over methods and seeds only."""
    return r.get("variants", {"": r})


def log_to_wandb(r: dict[str, Any], images: dict[str, Path], tracker: Any) -> None:
    """The headline figures as the run's summary, and the PNGs, on a ``Tracker`` (a knob
    sweep's figures under ``<setting>/``)."""
    flat = {}
    for label, v in settings(r).items():
        pre = f"{label}/" if label else ""
        flat |= {f"{pre}win_rate/{judge}/{k}": w["value"] for judge, d in v["win_rate"].items() for k, w in d.items()}
        flat |= {f"{pre}cost/{stage}/{k}": x for stage, c in v["cost"].items() for k, x in c.items()
                 if k in COST_KEYS}
    tracker.log(flat)
    tracker.summary(flat)
    tracker.log_images(images)


def print_summary(r: dict[str, Any], sweep_dir: Path) -> None:
    print(f"\nSweep report: {sweep_dir / 'report.md'}")
    for label, v in settings(r).items():
        if label:
            print(f"  {label}:")
        for line in verdict(v):
            print(("    " if label else "  ") + line.replace("**", ""))


def run(ctx: Any) -> dict[str, Any]:
    """``+experiment=report sweep_dir=...``: (re)build a finished sweep's report."""
    if not ctx.cfg.sweep_dir:
        raise ValueError("sweep_dir: required, e.g. `python run.py +experiment=report sweep_dir=multirun/<date>`")
    r, images = build(ctx.cfg.sweep_dir)
    log_to_wandb(r, images, ctx.tracker)
    print_summary(r, Path(ctx.cfg.sweep_dir))
    if "variants" in r:
        return {"sweep_dir": str(ctx.cfg.sweep_dir), "variants": {k: {"win_rate": v["win_rate"], "cost": v["cost"]}
                                                                   for k, v in r["variants"].items()}}
    return {"sweep_dir": str(ctx.cfg.sweep_dir), "win_rate": r["win_rate"], "cost": r["cost"]}
