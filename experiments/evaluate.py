"""Head-to-head evaluation driver: policies generate on held-out test prompts with fixed
sampling; the gold judge and the preference model score every reply; pairs of policies get
win / tie / lose shares and win rates with bootstrap intervals (``alignment/winrate.py``).

Replies are cached by (model, prompts, quality tag, sampling, seed), so the jobs of a sweep
judge the same SFT replies and a later job reuses what an earlier one generated. Every run
writes the per-prompt scores to ``scores.json``: the sweep report pairs methods from them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from actors.group import shard
from actors.policy import PolicyActor
from actors.preference import PreferenceActor
from actors.reference import ReferenceActor
from alignment.atomic import write_json
from alignment.generation import RolloutSpec
from alignment.losses.kl import kl_estimate
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import Rollout, pack
from alignment.sequences import prompt_ids, scored_sequences
from alignment.winrate import outcomes, win_rate
from alignment.world import WorldPrompt
from experiments.context import RunContext
from experiments.replies import Job, load_replies, replies_key, save_replies
from experiments.sft import generate, model_spec, strategy_spec

SCORES_FILE = "scores.json"


def generate_with(ctx: RunContext, model_path: Path, jobs: dict[str, Job], role: str,
                  progress: tqdm | None = None, stage: str = "eval") -> dict[str, list[str]]:
    """Every job's replies from the policy at ``model_path``: cached ones are read back, the rest
    are generated on one policy group and cached (``progress`` counts the prompts answered; the
    group's cost joins ``stage``)."""
    cfg = ctx.cfg
    keys = {name: replies_key(ctx, model_path, job) for name, job in jobs.items()}
    out: dict[str, list[str]] = {}
    for name, key in keys.items():
        cached = load_replies(ctx, key)
        if cached is not None:
            out[name] = cached
            if progress is not None:
                progress.update(len(jobs[name].prompts))
    todo = [name for name in jobs if name not in out]
    if not todo:
        print(f"EVAL: reusing cached replies of {model_path.name} ({', '.join(jobs)})", flush=True)
        return out
    group = ctx.group(PolicyActor, role, cfg.ray.policy, cfg.trainer.num_threads, stage)
    try:
        group.call("init_model", model_spec(cfg, model_path, str(model_path)),
                   strategy_spec(cfg, cfg.ray.policy.num_gpus > 0), None)
        for name in todo:
            out[name] = generate(ctx, group, jobs[name].prompts, jobs[name].quality)
            save_replies(ctx, keys[name], name, model_path, out[name])
            if progress is not None:
                progress.update(len(jobs[name].prompts))
    finally:
        group.shutdown()
    return {name: out[name] for name in jobs}


def generate_many(ctx: RunContext, work: dict[str, tuple[Path, dict[str, Job]]]) -> dict[str, list[str]]:
    """``generate_with`` for several models at once (``{role: (model, jobs)}``), one policy group
    each, side by side when the cluster has room."""
    total = sum(len(job.prompts) for _, jobs in work.values() for job in jobs.values())
    with ThreadPoolExecutor(max_workers=len(work)) as pool, tqdm(total=total, desc="eval replies") as bar:
        futures = [pool.submit(generate_with, ctx, path, jobs, role, bar) for role, (path, jobs) in work.items()]
        out: dict[str, list[str]] = {}
        for f in futures:
            out |= f.result()
    return out


def judge_jobs(ctx: RunContext, work: dict[str, tuple[Path, dict[str, Job]]], pm_path: Path, sft_path: Path,
               prompts: list[WorldPrompt], pm_judged: tuple[str, ...],
               ) -> tuple[dict[str, list[str]], dict[str, list[float]], dict[str, list[float]]]:
    """Replies of every job in ``work`` (``generate_many``), the gold judge's score of each, and the
    preference model's scores of the ``pm_judged`` jobs (those answering every test prompt in
    ``prompts``). The per-prompt scores go to ``scores.json``. Returns (replies, gold, pm)."""
    replies = generate_many(ctx, work)
    jobs = {name: job for _, named in work.values() for name, job in named.items()}
    gold = {name: [ctx.world.judge(p, r) for p, r in zip(jobs[name].prompts, rs)] for name, rs in replies.items()}
    pm = pm_scores(ctx, pm_path, sft_path, prompts, {k: replies[k] for k in pm_judged})
    write_scores(ctx, prompts, gold, pm)
    return replies, gold, pm


def pm_scores(ctx: RunContext, pm_path: Path, tokenizer_dir: Path, prompts: list[WorldPrompt],
              replies: dict[str, list[str]]) -> dict[str, list[float]]:
    """The preference model's score of every reply, per policy."""
    cfg = ctx.cfg
    tokenizer = load_tokenizer(str(tokenizer_dir))
    group = ctx.group(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads, "eval")
    try:
        group.call("init_model", str(pm_path), False, strategy_spec(cfg, cfg.ray.preference.num_gpus > 0))
        out = {}
        for name, texts in replies.items():
            seqs = scored_sequences(tokenizer, [p.conversation() for p in prompts], texts, cfg.pm.max_length,
                                    cfg.pm.context_turns)
            out[name] = group.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)
        return out
    finally:
        group.shutdown()


def head_to_head(ctx: RunContext, gold: dict[str, list[float]], pm: dict[str, list[float]],
                 pairs: list[tuple[str, str]]) -> dict[str, dict[str, dict]]:
    """``{judge: {"a_vs_b": {value, ci, win, tie, lose, n}}}`` for every pair, judged by the
    gold judge and by the preference model (the layout of ``results.json``)."""
    seed = ctx.cfg.seed
    out: dict[str, dict[str, dict]] = {"gold": {}, "pm": {}}
    for judge, scores in (("gold", gold), ("pm", pm)):
        for a, b in pairs:
            w = win_rate(outcomes(scores[a], scores[b]), seed=seed).as_dict()
            out[judge][f"{a}_vs_{b}"] = {"value": w["win_rate"], "ci": [w["ci_low"], w["ci_high"]],
                                         "win": w["win"], "tie": w["tie"], "lose": w["lose"], "n": w["n"]}
    return out


def write_scores(ctx: RunContext, prompts: list[WorldPrompt], gold: dict[str, list[float]],
                 pm: dict[str, list[float]]) -> Path:
    """Per-prompt gold and preference-model scores of each policy, for pairing across runs."""
    path = ctx.run_dir / SCORES_FILE
    write_json(path, {"seed": ctx.cfg.seed, "prompts": [p.uid for p in prompts],
                      "gold": {k: gold[k] for k in pm}, "pm": pm})
    return path


def frontier_points(ctx: RunContext, name: str, model_path: Path, sft_path: Path, pm_path: Path,
                    prompts: list[WorldPrompt], tags: list[int | None]) -> list[dict[str, Any]]:
    """Reward against KL to the SFT model, one point per quality tag (``None``: no tag).

    The policy samples as PPO does (``algo`` temperature and length, no top-p), so the mean of
    ``sum_t log pi(y_t) - log pi_SFT(y_t)`` over its samples estimates KL(pi || pi_SFT). The SFT
    model sees the prompt without the tag. Each point holds that KL, the gold score and the
    preference-model score of the same samples. ``name`` labels the actors (``<name>-frontier-policy``)."""
    cfg, a = ctx.cfg, ctx.cfg.algo
    tok = load_tokenizer(str(sft_path))
    spec = RolloutSpec(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=1.0)
    plain = [prompt_ids(tok, p.conversation()) for p in prompts]
    policy = ctx.group(PolicyActor, f"{name}-frontier-policy", cfg.ray.policy, cfg.trainer.num_threads, "eval")
    reference = ctx.group(ReferenceActor, f"{name}-frontier-reference", cfg.ray.reference, cfg.trainer.num_threads,
                          "eval")
    scorer = ctx.group(PreferenceActor, f"{name}-frontier-preference", cfg.ray.preference,
                       cfg.pm.trainer.num_threads, "eval")
    try:
        policy.wait(policy.submit("init_model", None, spec=model_spec(cfg, model_path, str(model_path)),
                                  strategy=strategy_spec(cfg, cfg.ray.policy.num_gpus > 0), optim=None)
                    + reference.submit("init_model", None, path=str(sft_path))
                    + scorer.submit("init_model", None, path=str(pm_path), drop_last_layer=False,
                                    strategy=strategy_spec(cfg, cfg.ray.preference.num_gpus > 0)))
        points = []
        for tag in tags:
            ids = [prompt_ids(tok, p.conversation(), tag) for p in prompts]
            parts = policy.call_sharded("rollout", shard(ids, policy.size), spec=spec, seed=cfg.seed)
            sampled = Rollout.cat([p[0] for p in parts], tok.pad_token_id)
            texts = [t for p in parts for t in p[1]]
            responses = [row[len(p):] for row, p in zip(sampled.token_lists(), ids)]
            untagged = pack(plain, responses, [[0.0] * len(r) for r in responses], tok.pad_token_id)
            ref = torch.cat(reference.wait(reference.submit(
                "logprobs", [(r,) for r in untagged.split(reference.size)], temperature=spec.temperature)))
            kl = (kl_estimate(sampled.logprobs, ref, "k1") * sampled.response_mask).sum(1)
            seqs = scored_sequences(tok, [p.conversation() for p in prompts], texts, cfg.pm.max_length,
                                    cfg.pm.context_turns)
            pm = scorer.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)
            gold = [ctx.world.judge(p, t) for p, t in zip(prompts, texts)]
            points.append({"tag": tag, "kl": kl.mean().item(), "gold": sum(gold) / len(gold),
                           "pm": sum(pm) / len(pm), "n": len(prompts)})
        return points
    finally:
        for g in (policy, reference, scorer):
            g.shutdown()
