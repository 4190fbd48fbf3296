"""Compare driver: SFT → preference model → the methods of ``compare.methods`` (default PAT and PPO;
any of quark, pat, ppo, dpo, grpo, rloo, bon) trained side by side on one Ray cluster → every pair (each
method against SFT, then every two methods) judged by each judge. ``+experiment=compare``.

The methods share the cached SFT and preference-model artifacts. Each trains in a driver thread
that starts its own actor groups, ``compare.max_parallel`` at a time, so they overlap whenever
the cluster has room (``compare.concurrent=false`` runs them one after the other, for timing).
GRPO and RLOO run the PPO loop with ``compare.grpo`` / ``compare.rloo`` as their settings
(``RunContext.for_method``); best-of-n's "training" is drawing and scoring its samples; Quark
starts from PAT's model (waiting for PAT when PAT is compared too). The spans
go to ``timing.jsonl``; the report is the sweep report of this one run.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from alignment.pat import bucket_tags
from alignment.quark import round_summary
from experiments.evaluation.equal_kl import bon_path, final_kls, job_at_kl, sft_point, training_path
from experiments.evaluation.head_to_head import frontier_points, head_to_head, judge_replies, method_results
from experiments.evaluation.replies import Job, generate_many, side_by_side
from experiments.reports.runs import Run
from experiments.reports.sweep import METHODS, aggregate, pairs_of
from experiments.reports.sweep_plots import timeline_plot
from experiments.reports.sweep_report import print_summary, write_report
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.runtime.engines import shares_gpu
from experiments.stages import bon
from experiments.stages.chain import STAGES
from experiments.stages.pat import controllability, tag_jobs
from experiments.stages.pm import pm_stage
from experiments.stages.ppo import snapshots
from experiments.stages.quark import round_path
from experiments.stages.sft import base_model, sft_stage

POLICIES = ("ppo", "grpo", "rloo", "dpo")  # the methods whose product is one policy answering every prompt


def overlap(cost: dict[str, dict[str, Any]], a: str, b: str) -> float:
    """Seconds during which spans ``a`` and ``b`` both ran (0 if either was cached)."""
    if cost.get(a, {}).get("cached", True) or cost.get(b, {}).get("cached", True):
        return 0.0
    return max(0.0, min(cost[a]["end_s"], cost[b]["end_s"]) - max(cost[a]["start_s"], cost[b]["start_s"]))


def train_all(ctx: RunContext, sft: Artifact, pm: Artifact, methods: list[str]) -> dict[str, Any]:
    """Every method's product (an ``Artifact``; best-of-n's ``bon.Samples``), trained side by side
    (``compare.max_parallel`` at a time; one with vLLM engines on a shared GPU) or one after the
    other. With PAT and PPO side by side, PAT's actors run at a lower OS priority and get more
    threads once PPO is done (``compare.pat_*``)."""
    c = ctx.cfg.compare
    workers = min(c.max_parallel, len(methods)) if c.concurrent and not shares_gpu(ctx.cfg) else 1
    if c.concurrent and workers > 1 and {"pat", "ppo"} <= set(methods):
        ctx.nice["pat"] = c.pat_nice
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        made = {"sft": sft, "pm": pm}  # what each method trains from (the table of stages: stages/chain.py)
        futures: dict[str, Future] = {}

        def build(m: str) -> Any:  # a method built on another (Quark on PAT) waits for it, or builds it here
            ups = [made[n] if n in made else futures[n].result() if n in futures
                   else STAGES[n].build(ctx.for_method(n), *STAGES[n].upstream(made)) for n in STAGES[m].needs]
            return STAGES[m].build(ctx.for_method(m), *ups)

        # upstream methods first, so that a waiting method never holds the only worker
        for m in sorted(methods, key=lambda m: any(n in methods for n in STAGES[m].needs)):
            futures[m] = pool.submit(build, m)
        if workers > 1 and set(methods) == {"pat", "ppo"} and c.pat_threads_after_ppo > 0:
            futures["ppo"].add_done_callback(lambda _: ctx.widen("pat", c.pat_threads_after_ppo))
        return {m: f.result() for m, f in futures.items()}
    finally:  # on a method's failure the queued ones never start (the running ones end first)
        pool.shutdown(wait=True, cancel_futures=True)


def frontiers(ctx: RunContext, made: dict[str, Any], sft: Artifact, pm: Artifact) -> dict[str, Any]:
    """The reward-KL points of every trained policy on the first ``pat.control_prompts`` test prompts
    (PAT: one per tag), side by side as far as the cores allow (``side_by_side``: one at a time with
    vLLM engines on a shared GPU)."""
    control = ctx.test_prompts[: ctx.cfg.pat.control_prompts]
    tags = {"pat": list(bucket_tags(ctx.cfg.pat.n_buckets)), "quark": [ctx.cfg.pat.inference_tag]}
    todo = [m for m in ("pat", *POLICIES, "quark") if m in made]
    workers, threads = side_by_side(ctx.cfg, min(len(todo), 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {m: pool.submit(frontier_points, ctx.for_method(m), m, made[m].path, sft.path, pm.path, control,
                                  tags.get(m, [None]), threads) for m in todo}
        return {m: f.result() for m, f in futures.items()}


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    methods = [m for m in METHODS if m in cfg.compare.methods]
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    ctx.world  # noqa: B018 -- build the world and the prompts once, before the threads share them
    prompts = ctx.test_prompts
    made = train_all(ctx, sft, pm, methods)

    pairs = pairs_of(methods)
    policies = ("sft", *methods)
    base = base_model(ctx)  # a pretrained model: the untrained checkpoint answers too (``base``)
    if base is not None:
        pairs += [(p, "base") for p in policies]
        policies = (*policies, "base")
    with ctx.costs.span("eval"):
        work = {f"{m}-eval": (made[m].path, tag_jobs(cfg, prompts) if m == "pat" else
                              {m: Job(prompts, cfg.pat.inference_tag if m == "quark" else None)})
                for m in methods if m != "bon"}
        work["sft-eval"] = (sft.path, {"sft": Job(prompts)})
        if base is not None:
            work["base-eval"] = (base, {"base": Job(prompts)})
        replies = generate_many(ctx, work)
        jobs = {name: job for _, named in work.values() for name, job in named.items()}
        if "bon" in made:
            jobs["bon"], replies["bon"] = Job(prompts), made["bon"].best
        judged = judge_replies(ctx, jobs, replies, pm.path, sft.path, prompts, policies, pairs)
        frontier = frontiers(ctx, made, sft, pm)
        frontier["sft"] = sft_point(ctx, sft.path, pm.path)
        for m in ("ppo", "grpo", "rloo"):
            if m in made:
                frontier[f"{m}_path"] = training_path(ctx.for_method(m), m, snapshots(made[m].path), sft.path, pm.path)
        if "quark" in made:
            frontier["quark_path"] = round_path(ctx, made["quark"], sft, pm)
            frontier["quark"] = [p | {"step": cfg.quark.rounds, "round": cfg.quark.rounds} for p in frontier["quark"]]
        if "bon" in made:
            frontier["bon_path"] = bon_path(ctx, sft.path, pm.path)
        bon_curve = bon.summary(ctx, made["bon"], judged, pm, sft) if "bon" in made else None
    wins = head_to_head(ctx, judged, pairs)
    cost = ctx.costs.summary()
    trained = {m: a for m, a in made.items() if isinstance(a, Artifact)}
    for m in ("ppo", "grpo", "rloo"):
        if m in trained:
            frontier[f"{m}_training"] = trained[m].info.get("path", [])
    results = {
        "methods": methods,
        "pm": {"val_accuracy": pm.info["eval"]["val_accuracy"],
               "gold_agreement": pm.info["eval"].get("gold_agreement")},
        **method_results(ctx, judged, wins, policies),
        **({"controllability": controllability(cfg, judged)} if "pat" in made else {}),
        **{m: {"final": trained[m].info["final"], "train_seconds": trained[m].info.get("train_seconds"),
               "restarts": len(trained[m].info.get("restarts", []))} for m in ("ppo", "grpo", "rloo") if m in trained},
        **({"bon": bon_curve} if bon_curve else {}),
        **({"quark": {"rounds": round_summary([*frontier["quark_path"], *frontier["quark"]]),
                      "n_rounds": cfg.quark.rounds, "kl_coef": cfg.quark.kl_coef, "pool": trained["quark"].info["pool"],
                      "train_seconds": trained["quark"].info.get("train_seconds")}} if "quark" in trained else {}),
        "frontier": frontier,
        "cost": cost,
        "concurrency": {"concurrent": cfg.compare.concurrent, "max_parallel": cfg.compare.max_parallel,
                        **({"overlap_s": overlap(cost, "pat", "ppo")} if {"pat", "ppo"} <= set(made) else {})},
        "artifacts": {"sft": str(sft.path), "pm": str(pm.path), **{m: str(a.path) for m, a in trained.items()}},
        "cached": {"sft": sft.cached, "pm": pm.cached, **{m: a.cached for m, a in trained.items()}},
    }
    results["kl"] = {"final": final_kls(frontier, cfg.pat.inference_tag), "bound": ["bon"] if "bon" in made else [],
                     "training_final": {m: trained[m].info["final"]["ppo/kl"] for m in ("ppo", "grpo", "rloo")
                                        if m in trained}}
    results["at_kl"] = job_at_kl(frontier)
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
    print_timeline(cost, methods)
    return results


def print_timeline(cost: dict[str, dict[str, Any]], methods: list[str]) -> None:
    print("  timeline (seconds from the start of the run; timing.jsonl has every span):")
    for name, c in sorted(cost.items(), key=lambda kv: kv[1].get("start_s", -1)):
        if c.get("cached"):
            print(f"    {name:<6} reused from the cache")
        else:
            print(f"    {name:<6} {c['start_s']:7.1f} -> {c['end_s']:7.1f}  "
                  f"({c['wall_s']:.1f} s, {c['cpu_s']:.0f} CPU-s)")
    if {"pat", "ppo"} <= set(methods):
        print(f"  PAT and PPO overlapped for {overlap(cost, 'pat', 'ppo'):.1f} s")
