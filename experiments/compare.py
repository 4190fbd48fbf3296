"""Compare driver: SFT → preference model → PAT and PPO side by side on one Ray cluster →
every pair (PAT–SFT, PPO–SFT, PAT–PPO) judged by the gold judge and the preference model.
``+experiment=compare``.

PAT and PPO share the cached SFT and preference-model artifacts and train in two driver
threads, each starting its own actor groups, so they overlap whenever the cluster has room
for both (``compare.concurrent=false`` runs them one after the other, for timing). The spans
go to ``timing.jsonl``; the report is the sweep report of this one run.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alignment.pat import bucket_tags
from experiments.context import RunContext
from experiments.evaluate import Job, frontier_points, head_to_head, judge_jobs, method_results
from experiments.pat import controllability, pat_stage, tag_jobs
from experiments.pm import pm_stage
from experiments.ppo import ppo_stage
from experiments.sft import sft_stage
from experiments.sweep import PAIRS, Run, aggregate
from experiments.sweep_report import print_summary, timeline_plot, write_report


def overlap(cost: dict[str, dict[str, Any]], a: str, b: str) -> float:
    """Seconds during which spans ``a`` and ``b`` both ran (0 if either was cached)."""
    if cost.get(a, {}).get("cached", True) or cost.get(b, {}).get("cached", True):
        return 0.0
    return max(0.0, min(cost[a]["end_s"], cost[b]["end_s"]) - max(cost[a]["start_s"], cost[b]["start_s"]))


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    ctx.world  # noqa: B018 -- build the world and the prompts once, before the threads share them
    ctx.test_prompts  # noqa: B018
    if cfg.compare.concurrent:
        ctx.nice["pat"] = cfg.compare.pat_nice
    with ThreadPoolExecutor(max_workers=2 if cfg.compare.concurrent else 1) as pool:
        pat_f = pool.submit(pat_stage, ctx, sft, pm)
        ppo_f = pool.submit(ppo_stage, ctx, sft, pm)
        if cfg.compare.concurrent and cfg.compare.pat_threads_after_ppo > 0:
            ppo_f.add_done_callback(lambda _: ctx.widen("pat", cfg.compare.pat_threads_after_ppo))
        pat, ppo = pat_f.result(), ppo_f.result()

    prompts = ctx.test_prompts
    control = prompts[: cfg.pat.control_prompts]
    with ctx.costs.span("eval"):
        work = {"pat-eval": (pat.path, tag_jobs(cfg, prompts)), "ppo-eval": (ppo.path, {"ppo": Job(prompts)}),
                "sft-eval": (sft.path, {"sft": Job(prompts)})}
        judged = judge_jobs(ctx, work, pm.path, sft.path, prompts, ("pat", "ppo", "sft"), PAIRS)
        tags = list(bucket_tags(cfg.pat.n_buckets))
        with ThreadPoolExecutor(max_workers=2) as pool:
            pat_front = pool.submit(frontier_points, ctx, "pat", pat.path, sft.path, pm.path, control, tags)
            ppo_front = pool.submit(frontier_points, ctx, "ppo", ppo.path, sft.path, pm.path, control, [None])
            frontier = {"pat": pat_front.result(), "ppo": ppo_front.result()}
    wins = head_to_head(ctx, judged, PAIRS)
    cost = ctx.costs.summary()
    results = {
        "pm": {"val_accuracy": pm.info["eval"]["val_accuracy"],
               "gold_agreement": pm.info["eval"].get("gold_agreement")},
        **method_results(ctx, judged, wins, ("sft", "pat", "ppo")),
        "controllability": controllability(cfg, judged),
        "kl": {"final": ppo.info["final"]["ppo/kl"], "final_per_token": ppo.info["final"]["ppo/kl_per_token"]},
        "frontier": frontier,
        "cost": cost,
        "concurrency": {"concurrent": cfg.compare.concurrent, "overlap_s": overlap(cost, "pat", "ppo")},
        "artifacts": {"sft": str(sft.path), "pm": str(pm.path), "pat": str(pat.path), "ppo": str(ppo.path)},
        "cached": {"sft": sft.cached, "pm": pm.cached, "pat": pat.cached, "ppo": ppo.cached},
    }
    metrics = [json.loads(line) for line in ctx.tracker.metrics_path.read_text().splitlines() if line.strip()]
    report = aggregate([Run(ctx.run_dir, "compare", cfg.seed, results,
                            json.loads((ctx.run_dir / "scores.json").read_text()), metrics)])
    images = write_report(ctx.run_dir, report)
    images["timeline"] = timeline_plot(cost, ctx.run_dir / "timeline.png")
    flat = {f"win_rate/{judge}/{k}": w["value"] for judge, d in wins.items() for k, w in d.items()}
    ctx.tracker.log(flat)
    ctx.tracker.summary(flat)
    ctx.tracker.log_images(images)
    print_summary(report, ctx.run_dir)
    print_timeline(cost)
    return results


def print_timeline(cost: dict[str, dict[str, Any]]) -> None:
    print("  timeline (seconds from the start of the run; timing.jsonl has every span):")
    for name, c in sorted(cost.items(), key=lambda kv: kv[1].get("start_s", -1)):
        if c.get("cached"):
            print(f"    {name:<6} reused from the cache")
        else:
            print(f"    {name:<6} {c['start_s']:7.1f} -> {c['end_s']:7.1f}  "
                  f"({c['wall_s']:.1f} s, {c['cpu_s']:.0f} CPU-s)")
    print(f"  PAT and PPO overlapped for {overlap(cost, 'pat', 'ppo'):.1f} s")
