"""Quark driver (Lu et al., 2022), PAT made online: SFT → preference model → PAT (round 1) → rounds
2..``quark.rounds`` → evaluation against SFT and PAT (and PPO when cached), each round's policy on
the reward-KL plane. ``+experiment=quark``; the maths is ``alignment/quark.py`` and
``alignment/losses/quark.py``.

Each later round, on the same actors as every method (the policy, the reference holding the SFT
model, the preference model):

    sample      the previous round's model answers quark.prompts_per_round training prompts,
                quark.samples_per_prompt times each, at tags drawn across the buckets
    score       the preference model scores the replies; they join the pool (the SFT data with
                PAT's scores, and every earlier round's samples)
    re-bucket   the whole pool's scores into pat.n_buckets quantile tags
    train       quark.examples_per_round pool records (drawn anew), tagged: the next-token loss plus
                quark.kl_coef x the per-token KL to the SFT model (the reference's log-distributions
                of the untagged conversation, per batch), minus quark.entropy_coef x the entropy

Every round is its own cache entry (``quark/<key>``: the policy, ``eval.json`` and the round's
scored samples, ``samples.json``), keyed by the settings without ``quark.rounds``: an interrupted run
resumes at its last finished round, and a run with more rounds continues a shorter one.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from actors.policy import PolicyActor, QuarkExample, QuarkSpec
from actors.preference import PreferenceActor
from actors.reference import ReferenceActor
from alignment.chat_format import Conversation
from alignment.data.batching import bucketed_batches
from alignment.generation import SamplingSpec
from alignment.loss_mask import Encoded, LossPolicy, encode_many, truncate
from alignment.models.tokenizer import load_tokenizer
from alignment.pat import bucket_tags
from alignment.quark import (
    Pool,
    PoolRecord,
    align_reference,
    draw_tags,
    rebucket,
    round_summary,
    subset_size,
    tagged_pool,
    train_subset,
)
from alignment.sequences import scored_sequences
from experiments.config import as_key
from experiments.evaluation.equal_kl import control_prompts, print_at_kl
from experiments.evaluation.head_to_head import frontier_points, method_metrics
from experiments.evaluation.replies import Job, reply_all
from experiments.evaluation.versus_sft import method_run_results, publish, versus_sft
from experiments.reports.report import print_win_rates
from experiments.runtime.cache import INFO_FILE, Artifact, commit
from experiments.runtime.context import RunContext
from experiments.runtime.loop import Checkpoints, total_steps, train_loop
from experiments.runtime.specs import model_spec, optim_config, strategy_spec
from experiments.stages.pat import SCORES, pat_conversations, pat_stage
from experiments.stages.pm import pm_stage
from experiments.stages.ppo import ppo_key
from experiments.stages.sft import sft_stage

SAMPLES = "samples.json"  # in a round's artifact: the scored samples that round added to the pool


def round_key(ctx: RunContext, pat: Artifact, pm: Artifact, k: int) -> tuple[str, dict[str, Any]]:
    """The cache key of round ``k`` (2..) and its payload: Quark's settings but ``rounds`` (round k is
    the same whatever the number of rounds after it), the round, PAT's model (round 1, which says
    which SFT data, SFT model and preference model), the preference model and the seed."""
    cfg = ctx.cfg
    quark = as_key(cfg.quark)
    quark.pop("rounds")
    payload = {"quark": quark, "round": k, "pat": str(pat.path), "pm": str(pm.path),
               "n_buckets": cfg.pat.n_buckets, "data": as_key(cfg.data), "strategy": as_key(cfg.strategy),
               "pm_max_length": cfg.pm.max_length, "pm_context_turns": cfg.pm.context_turns, "seed": cfg.seed}
    if as_key(cfg.tools):  # samples with tools differ (and keys without them stay as they are)
        payload["tools"] = as_key(cfg.tools)
    return ctx.cache_key("quark", payload), payload


def quark_key(ctx: RunContext, sft: Artifact, pm: Artifact, pat: Artifact) -> str:
    """The key of the last round: the Quark policy of this config."""
    return round_key(ctx, pat, pm, ctx.cfg.quark.rounds)[0]


def round_contexts(ctx: RunContext, k: int) -> list[Conversation]:
    """Round ``k``'s training prompts, each as the conversation to answer: world train prompts from
    ``quark.prompt_offset`` (a fresh, deterministic set each round), or the SFT file's conversations
    (their last human turns) in turn."""
    q = ctx.cfg.quark
    n = q.prompts_per_round
    if ctx.world_data:
        return [p.conversation() for p in ctx.world.prompts("train", n, offset=q.prompt_offset + k)]
    convs = ctx.sft_conversations()
    return [convs[((k - 2) * n + i) % len(convs)] for i in range(n)]


def sample_replies(ctx: RunContext, group: Any, contexts: list[Conversation], tags: list[int],
                   bar: tqdm, k: int) -> list[str]:
    """A reply to each context under its tag (``quark.*`` sampling), one batch of rows per tag, prompted
    in the model's own format (``reply_all``: rows whose meta-instruction switches tools on go through
    the passes of tool use)."""
    cfg, q = ctx.cfg, ctx.cfg.quark
    spec = SamplingSpec(max_new_tokens=q.max_new_tokens, temperature=q.temperature, top_p=q.top_p, top_k=0,
                        repetition_penalty=1.0, do_sample=True)
    out: list[str | None] = [None] * len(contexts)
    for tag in sorted(set(tags)):
        rows = [i for i, t in enumerate(tags) if t == tag]
        replies = reply_all(ctx, group, [contexts[i] for i in rows], spec, cfg.seed * 1009 + 101 * k + tag, tag)
        for i, reply in zip(rows, replies):
            out[i] = reply
        bar.update(len(rows))
    return out


def score(ctx: RunContext, scorer: Any, tokenizer: Any, contexts: list[Conversation],
          replies: list[str]) -> list[float]:
    """The preference model's score of each reply to its context."""
    cfg = ctx.cfg
    seqs = scored_sequences(tokenizer, contexts, replies, cfg.pm.max_length, cfg.pm.context_turns)
    return scorer.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)


def sft_pool(ctx: RunContext, pat: Artifact, scorer: Any, tokenizer: Any) -> Pool:
    """Round 1's records: PAT's SFT conversations with the scores PAT tagged them by (kept in its
    artifact; an older PAT artifact without them has them scored again)."""
    convs = pat_conversations(ctx)
    saved = pat.path / SCORES
    scores = json.loads(saved.read_text()) if saved.is_file() else None
    if scores is None or len(scores) != len(convs):
        print(f"QUARK: scoring PAT's {len(convs)} SFT conversations for the pool", flush=True)
        scores = score(ctx, scorer, tokenizer, convs, [c.turns[-1].reply for c in convs])
    return Pool(PoolRecord(c, float(s), 1) for c, s in zip(convs, scores))


def encode_pairs(ctx: RunContext, tokenizer: Any, pool: Pool, tags: list[int],
                 keep: list[int]) -> tuple[list[Encoded], dict[int, Encoded]]:
    """The tagged encoding of each kept pool record (what the policy trains on) and, by the tagged
    encoding's id, the untagged one (what the reference sees)."""
    cfg = ctx.cfg
    policy = LossPolicy.from_names(cfg.data.loss_on, cfg.data.last_turn_only)
    records, every = pool.records, tagged_pool(pool, tags)
    tagged = [every[i] for i in keep]
    plain = [records[i].conversation for i in keep]
    enc = [truncate(e, cfg.data.max_length) for e in encode_many(tagged, tokenizer, policy)]
    ref = [truncate(e, cfg.data.max_length) for e in encode_many(plain, tokenizer, policy)]
    return enc, {id(e): r for e, r in zip(enc, ref)}


def with_reference(reference: Any, untagged: dict[int, Encoded]):
    """A ``train_loop`` ``prepare``: each tagged example of a batch with the reference's
    log-distributions at its labelled tokens (``align_reference``), from its untagged twin."""

    def prepare(batch: list[Encoded]) -> list[QuarkExample]:
        ref = reference.map_sharded("label_logprobs", [untagged[id(e)] for e in batch])
        out = []
        for e, r in zip(batch, ref):
            rows, mask = align_reference(sum(e.loss_mask[1:]), r)
            out.append(QuarkExample(e, rows, mask))
        return out

    return prepare


@dataclass
class Rounds:
    """What every round builds from: the upstream artifacts, the actor groups (the policy, the reference
    holding the SFT model, the preference model) and the tokenizer."""

    sft: Artifact
    pm: Artifact
    pat: Artifact
    policy: Any
    reference: Any
    scorer: Any
    tokenizer: Any


def build_round(ctx: RunContext, k: int, prev: Path, pool: Pool, up: Rounds, paths: dict[str, str],
                step_offset: int) -> Artifact:
    """Round ``k`` from the previous round's model at ``prev``: sample, score, add to ``pool`` (in
    place), re-bucket, train, commit. ``paths``: every earlier round's model, by round."""
    cfg, q = ctx.cfg, ctx.cfg.quark
    sft, pat, tokenizer = up.sft, up.pat, up.tokenizer
    key, payload = round_key(ctx, pat, up.pm, k)
    rng = random.Random(f"quark:{cfg.seed}:{k}")
    policy, reference, scorer = up.policy, up.reference, up.scorer
    steps = total_steps(subset_size(len(pool) + q.prompts_per_round * q.samples_per_prompt, q.examples_per_round),
                        q.trainer)
    policy.call("init_model", model_spec(cfg, sft.path, str(prev)), strategy_spec(cfg, cfg.ray.policy.num_gpus > 0),
                optim_config(q.trainer, steps))
    started = time.time()
    contexts = [c for c in round_contexts(ctx, k) for _ in range(q.samples_per_prompt)]
    tags = draw_tags(len(contexts), cfg.pat.n_buckets, rng)
    with tqdm(total=len(contexts), desc=f"quark round {k}: sampling", unit="reply", dynamic_ncols=True) as bar:
        replies = sample_replies(ctx, policy, contexts, tags, bar, k)
    scores = score(ctx, scorer, tokenizer, contexts, replies)
    new = [PoolRecord(c.with_last_reply(r), float(s), k) for c, r, s in zip(contexts, replies, scores)]
    pool.add(new)
    pool_tags, edges = rebucket(pool, cfg.pat.n_buckets)
    keep = train_subset(len(pool), q.examples_per_round, rng)
    examples, untagged = encode_pairs(ctx, tokenizer, pool, pool_tags, keep)
    counts = Counter(pool_tags)
    info: dict[str, Any] = {
        "round": k, "pool": {str(r): n for r, n in pool.counts().items()}, "edges": edges, "n_examples": len(examples),
        "tag_counts": {str(t): counts[t] for t in bucket_tags(cfg.pat.n_buckets)},
        "sample_score": sum(scores) / len(scores), "sample_tags": {str(t): tags.count(t) for t in sorted(set(tags))},
        "previous": str(prev)}
    ckpts = Checkpoints.of(ctx, "quark", key, q.trainer)
    info["train"] = train_loop(policy, "quark_step", examples, q.trainer, ctx.tracker, "quark", "tokens", cfg.seed + k,
                               batcher=bucketed_batches, checkpoints=ckpts,
                               call_kwargs={"spec": QuarkSpec(kl_coef=q.kl_coef, entropy_coef=q.entropy_coef)},
                               prepare=with_reference(reference, untagged), step_offset=step_offset)
    info["train_seconds"] = time.time() - started
    info["path_by_round"] = {**paths, str(k): str(ctx.cache.path("quark", key))}
    art = commit(ctx.cache, "quark", key, payload, policy, info, f"round {k} policy",
                 files={SAMPLES: [r.to_json() for r in new]})
    ckpts.clear()
    return art


def quark_stage(ctx: RunContext, sft: Artifact, pm: Artifact, pat: Artifact) -> Artifact:
    """The Quark policy for this config (its last round): from the cache, or its rounds made now,
    each round already in the cache reused."""
    cfg, q = ctx.cfg, ctx.cfg.quark
    final_key, _ = round_key(ctx, pat, pm, q.rounds)

    def build() -> Artifact:
        up = Rounds(sft, pm, pat, ctx.group(PolicyActor, "policy", cfg.ray.policy, q.trainer.num_threads, "quark"),
                    ctx.group(ReferenceActor, "reference", cfg.ray.reference, q.trainer.num_threads, "quark"),
                    ctx.group(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads, "quark"),
                    load_tokenizer(str(sft.path)))
        try:
            loading = (up.scorer.submit("init_model", path=str(pm.path), drop_last_layer=False,
                                        strategy=strategy_spec(cfg, cfg.ray.preference.num_gpus > 0))
                       + up.reference.submit("init_model", path=str(sft.path),
                                             strategy=strategy_spec(cfg, cfg.ray.reference.num_gpus > 0)))
            up.scorer.wait(loading)
            pool = sft_pool(ctx, pat, up.scorer, up.tokenizer)
            prev, paths, art, offset = pat.path, {"1": str(pat.path)}, None, 0
            for k in range(2, q.rounds + 1):
                key, _ = round_key(ctx, pat, pm, k)
                hit = ctx.cache.get("quark", key) if cfg.use_cache else None
                if hit is not None:
                    print(f"QUARK: reusing cached round {k} policy {hit}", flush=True)
                    art = Artifact(hit, True, json.loads((hit / INFO_FILE).read_text()))
                    pool.add(PoolRecord.from_json(r) for r in json.loads((hit / SAMPLES).read_text()))
                else:
                    art = build_round(ctx, k, prev, pool, up, paths, offset)
                offset += int(art.info["train"].get("quark/steps", 0))
                prev, paths = art.path, art.info["path_by_round"]
            return art
        finally:
            for group in (up.scorer, up.reference, up.policy):
                group.shutdown()

    return ctx.stage("quark", final_key, "policy", build)


def round_snapshots(art: Artifact) -> list[tuple[int, Path]]:
    """``(round, model directory)`` of every round before the last (round 1: the PAT model)."""
    by_round = {int(k): Path(p) for k, p in art.info["path_by_round"].items()}
    return sorted((k, p) for k, p in by_round.items() if p != art.path)


def round_path(ctx: RunContext, art: Artifact, sft: Artifact, pm: Artifact) -> list[dict[str, Any]]:
    """The reward-KL point of each round before the last, at the inference tag, measured like every
    method's point (``frontier_points``); ``step`` and ``round`` are the round."""
    tag = ctx.cfg.pat.inference_tag
    return [frontier_points(ctx, "quark", path, sft.path, pm.path, control_prompts(ctx), [tag])[0]
            | {"step": k, "round": k} for k, path in round_snapshots(art)]


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=quark``: the chain, PAT (round 1), the later rounds, then Quark vs SFT and vs PAT
    (and vs PPO when a PPO policy of the same SFT and preference model is cached), and each round's
    gold, preference-model score and KL to SFT (``quark.rounds.<k>``)."""
    cfg = ctx.cfg
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    pat = pat_stage(ctx, sft, pm)
    quark = quark_stage(ctx, sft, pm, pat)

    prompts, tag = ctx.test_prompts, cfg.pat.inference_tag
    others = {"pat": (pat.path, Job(prompts, tag))}
    ppo_path = ctx.cache.get("ppo", ppo_key(ctx, sft, pm)[0])
    if ppo_path is not None:
        print(f"QUARK: a PPO policy of the same SFT and preference model is cached ({ppo_path}); adding Quark vs PPO")
        others["ppo"] = (ppo_path, Job(prompts))
    v = versus_sft(ctx, "quark", quark, sft, pm, {"quark": Job(prompts, tag)}, tags=[tag], others=others)
    with ctx.costs.span("eval"):
        path = round_path(ctx, quark, sft, pm)
    final = [p | {"step": cfg.quark.rounds, "round": cfg.quark.rounds} for p in v.point]
    info = quark.info
    results = method_run_results(
        ctx, v, "quark", quark, sft, pm, {"val_accuracy": pm.info["eval"]["val_accuracy"]},
        {"quark": {"rounds": round_summary([*path, *final]), "n_rounds": cfg.quark.rounds,
                   "kl_coef": cfg.quark.kl_coef, "entropy_coef": cfg.quark.entropy_coef, "inference_tag": tag,
                   "pool": info["pool"], "edges": info["edges"], "tag_counts": info["tag_counts"],
                   "final": info["train"], "train_seconds": info.get("train_seconds")}},
        frontier={"quark": final, "quark_path": path},
        artifacts={"pat": str(pat.path), **({"ppo": str(ppo_path)} if ppo_path else {})})
    flat = {f"quark/round{k}_{name}": v for k, row in results["quark"]["rounds"].items()
            for name, v in row.items() if v is not None}
    return publish(ctx, results, method_metrics(results) | flat | {"kl/final_quark": results["kl"]["final"]["quark"]},
                   print_summary)


def print_summary(results: dict[str, Any]) -> None:
    q = results["quark"]
    print(f"\nQuark ({q['n_rounds']} rounds, kl_coef {q['kl_coef']}, <quality: {q['inference_tag']}>) on held-out "
          "test prompts")
    print_win_rates(results)
    if "gold" in results:
        print("  mean gold: " + ", ".join(f"{k.upper()} {v:.3f}" for k, v in results["gold"].items()))
    print("  by round (control prompts, temperature-1 samples; KL to the SFT model in nats per reply):")
    for k, row in q["rounds"].items():
        gold = "-" if row["gold"] is None else f"{row['gold']:.3f}"
        print(f"    round {k}: gold {gold}, preference model {row['pm_score']:.3f}, KL {row['kl']:.3f}")
    print(f"  pool: {', '.join(f'round {k}: {n}' for k, n in q['pool'].items())} records")
    print_at_kl(results.get("at_kl", {}))
