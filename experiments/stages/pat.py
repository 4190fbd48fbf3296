"""PAT driver (MOSS §7.2): SFT → preference model → score and tag SFT data → fine-tune the SFT
model on the tagged data → evaluation against SFT with the gold judge and the preference model,
and the controllability curve. ``+experiment=pat``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from actors.policy import PolicyActor
from actors.preference import PreferenceActor
from alignment.chat_format import Conversation
from alignment.data.batching import bucketed_batches
from alignment.data.formats import FilePrompt
from alignment.loss_mask import LossPolicy, encode_many, truncate
from alignment.models.tokenizer import load_tokenizer
from alignment.pat import bucket_tags, tag_conversation, tag_scores
from alignment.sequences import scored_sequences
from alignment.statistics import intervals
from alignment.statistics.winrate import spearman
from alignment.world import WorldPrompt
from experiments.config import LabConfig, as_key
from experiments.evaluation.equal_kl import print_at_kl
from experiments.evaluation.head_to_head import Judged, method_metrics
from experiments.evaluation.replies import Job
from experiments.evaluation.versus_sft import method_run_results, publish, versus_sft
from experiments.reports.report import JUDGE_NAMES, print_win_rates, write_pat_report
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.runtime.loop import Checkpoints, commit_trained, total_steps, train_loop
from experiments.runtime.specs import model_spec, optim_config, strategy_spec
from experiments.stages.pm import pm_stage
from experiments.stages.sft import sft_stage

SCORES = "pat_scores.json"  # in a PAT artifact: the preference model's score of each tagged conversation


def pat_conversations(ctx: RunContext) -> list[Conversation]:
    """The SFT conversations PAT samples, scores and tags."""
    return ctx.sft_conversations(ctx.cfg.pat.n_train)


def pat_key(ctx: RunContext, sft: Artifact, pm: Artifact) -> tuple[str, dict[str, Any]]:
    """The cache key of the PAT model for this config and upstream stages, and its payload."""
    cfg = ctx.cfg
    payload = {"pat": as_key(cfg.pat), "data": as_key(cfg.data), "strategy": as_key(cfg.strategy),
               "seed": cfg.seed, "sft": str(sft.path), "pm": str(pm.path)}
    return ctx.cache_key("pat", payload), payload


def pat_stage(ctx: RunContext, sft: Artifact, pm: Artifact) -> Artifact:
    """The PAT model for this config: from the cache, or tagged and trained now."""
    cfg = ctx.cfg
    key, payload = pat_key(ctx, sft, pm)

    def build() -> Artifact:
        tokenizer = load_tokenizer(str(sft.path))
        convs = pat_conversations(ctx)
        steps = total_steps(len(convs), cfg.pat.trainer)
        # both groups start, and load their models, while this process prepares the data
        scorer = ctx.group(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads, "pat")
        group = ctx.group(PolicyActor, "policy", cfg.ray.policy, cfg.pat.trainer.num_threads, "pat")
        try:
            loading = group.submit("init_model", spec=model_spec(cfg, sft.path, str(sft.path)),
                                   strategy=strategy_spec(cfg, cfg.ray.policy.num_gpus > 0),
                                   optim=optim_config(cfg.pat.trainer, steps))
            scorer.submit("init_model", path=str(pm.path), drop_last_layer=False,
                          strategy=strategy_spec(cfg, cfg.ray.preference.num_gpus > 0))
            seqs = scored_sequences(tokenizer, convs, [c.turns[-1].reply for c in convs], cfg.pm.max_length,
                                    cfg.pm.context_turns)
            scores = scorer.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)  # after its init
            scorer.shutdown()
            tags, edges = tag_scores(scores, cfg.pat.n_buckets, cfg.pat.rule, cfg.pat.thresholds)
            policy = LossPolicy.from_names(cfg.data.loss_on, cfg.data.last_turn_only)
            tagged = [tag_conversation(c, t) for c, t in zip(convs, tags)]
            examples = [truncate(e, cfg.data.max_length) for e in encode_many(tagged, tokenizer, policy)]
            group.wait(loading)
            counts = Counter(tags)
            info: dict[str, Any] = {"edges": edges, "n_examples": len(examples),
                                    "tag_counts": {str(t): counts[t] for t in bucket_tags(cfg.pat.n_buckets)}}
            ckpts = Checkpoints.of(ctx, "pat", key, cfg.pat.trainer)
            info["train"] = train_loop(group, "sft_step", examples, cfg.pat.trainer, ctx.tracker, "pat", "tokens",
                                       cfg.seed, batcher=bucketed_batches, checkpoints=ckpts)
            # the scores of the tagged conversations, in order: Quark's pool starts from them
            return commit_trained(ctx.cache, "pat", key, payload, group, info, "model", ckpts,
                                  files={SCORES: list(scores)})
        finally:
            scorer.shutdown()
            group.shutdown()

    return ctx.stage("pat", key, "model", build)


def tag_jobs(cfg: LabConfig, prompts: list[WorldPrompt] | list[FilePrompt]) -> dict[str, Job]:
    """PAT's evaluation replies: under the inference tag on every test prompt (``pat``), and under
    each bucket tag on the first ``pat.control_prompts`` (``tag_<t>``, the controllability curve)."""
    control = prompts[: cfg.pat.control_prompts]
    return {"pat": Job(prompts, cfg.pat.inference_tag)} | {f"tag_{t}": Job(control, t)
                                                           for t in bucket_tags(cfg.pat.n_buckets)}


def controllability(cfg: LabConfig, judged: Judged) -> dict[str, Any]:
    """Mean score per inference tag, and its Spearman correlation with the tag: by the gold judge on
    the world's prompts, else by the reward model or the preference model; the paired per-prompt
    trend test (``trend``: mean per-prompt Spearman of score with tag, its 95% interval over prompts
    and p-value against no trend), and the per-prompt scores per tag (``per_prompt``) that a sweep
    pairs across seeds."""
    tags = bucket_tags(cfg.pat.n_buckets)
    judge = next(j for j in ("gold", "rm", "pm") if j in judged.scores)
    scores = judged.scores[judge]
    curve = [sum(scores[f"tag_{t}"]) / len(scores[f"tag_{t}"]) for t in tags]
    stats = intervals.controllability(tags, [np.array([scores[f"tag_{t}"] for t in tags])])
    return {"tags": tags, "judge": judge, "gold" if judge == "gold" else "score": curve,
            "spearman": spearman(tags, curve), "trend": stats["trend"],
            "per_prompt": {str(t): list(scores[f"tag_{t}"]) for t in tags}}


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=pat``: the whole chain, then PAT vs SFT and the controllability curve."""
    cfg = ctx.cfg
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    pat = pat_stage(ctx, sft, pm)

    v = versus_sft(ctx, "pat", pat, sft, pm, tag_jobs(cfg, ctx.test_prompts), tags=list(bucket_tags(cfg.pat.n_buckets)))
    results = method_run_results(
        ctx, v, "pat", pat, sft, pm,
        {"val_accuracy": pm.info["eval"]["val_accuracy"], "gold_agreement": pm.info["eval"].get("gold_agreement")},
        {"controllability": controllability(cfg, v.judged),
         "pat": {"tag_counts": pat.info["tag_counts"], "edges": pat.info["edges"],
                 "inference_tag": cfg.pat.inference_tag}})
    images = write_pat_report(ctx.run_dir, results)
    flat = {"pm/val_accuracy": results["pm"]["val_accuracy"],
            "controllability/spearman": results["controllability"]["spearman"]}
    return publish(ctx, results, flat | method_metrics(results), print_summary, images)


def print_summary(results: dict[str, Any]) -> None:
    print("\nPAT vs SFT on held-out test prompts")
    print_win_rates(results)
    c = results["controllability"]
    if "gold" in results:
        print(f"  mean gold: SFT {results['gold']['sft']:.3f}, PAT <quality: {results['pat']['inference_tag']}> "
              f"{results['gold']['pat']:.3f}")
    print(f"  controllability (tag -> {JUDGE_NAMES[c['judge']]}): "
          + ", ".join(f"{t}:{v:.2f}" for t, v in zip(c["tags"], c.get("gold", c.get("score"))))
          + f"  (Spearman {c['spearman']:.2f}; per-prompt trend {c['trend']['value']:.2f}"
          + (f" [{c['trend']['ci'][0]:.2f}, {c['trend']['ci'][1]:.2f}])" if c["trend"]["ci"] else ")"))
    print(f"  preference model val accuracy {results['pm']['val_accuracy']:.3f}")
    if "pat" in results["kl"]["final"]:
        print(f"  KL to the SFT model at <quality: {results['pat']['inference_tag']}>: "
              f"{results['kl']['final']['pat']:.3f} nats per reply (temperature-1 samples of the control prompts)")
    print_at_kl(results["at_kl"])
