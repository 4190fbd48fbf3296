"""Preference-model driver: SFT (cached) → AI-feedback pairs → pairwise training on the
preference actor → validation accuracy and gold agreement. ``+experiment=pm``."""

from __future__ import annotations

import itertools
import random
from typing import Any

from tqdm.auto import tqdm

from actors.group import RoleGroup
from actors.preference import PreferenceActor
from alignment.data.formats import load_preferences
from alignment.data.holdout import split_prompts
from alignment.data.loaders import load_multi_response
from alignment.data.preference import ComparisonGroup, multi_response_groups, pair_groups, world_groups
from alignment.models.tokenizer import load_tokenizer
from alignment.sequences import scored_sequences
from alignment.world import AIFeedbackLabeller
from experiments.choices import pm_feedback
from experiments.config import as_key
from experiments.evaluation.replies import Job, generate_with, sampler_key
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.runtime.loop import Checkpoints, commit_trained, total_steps, train_loop
from experiments.runtime.specs import lora_spec, optim_config, strategy_spec
from experiments.stages.feedback import feedback_contexts, feedback_payload, judge_feedback
from experiments.stages.sft import sft_stage


def pm_payload(ctx: RunContext, sft: Artifact) -> dict[str, Any]:
    cfg = ctx.cfg
    pm = as_key(cfg.pm)
    if pm_feedback(cfg) != "judge":  # the settings of judge feedback change nothing else
        for name in ("feedback", "judge", "candidates", "prompts_path", "prompts_format"):
            pm.pop(name, None)
    payload = {"pm": pm, "world": as_key(cfg.data.world), "strategy": as_key(cfg.strategy),
               "seed": cfg.seed, "sft": str(sft.path)}
    if cfg.pm.sft_samples:
        # the SFT samples' settings (with tools when they are on: the samples then differ)
        payload["sampling"] = as_key(cfg.eval) | sampler_key(cfg)
    if pm_feedback(cfg) == "judge":  # the labelled pairs' own key: prompts, candidates, sampling and judge
        payload["feedback"] = feedback_payload(ctx, sft, feedback_contexts(ctx))
    return payload


def comparison_groups(ctx: RunContext, sft: Artifact,
                      ) -> tuple[list[ComparisonGroup], list[ComparisonGroup], list[list[float]] | None]:
    """Training groups, validation groups and, on the world, the gold score of each val candidate.

    With ``pm.sft_samples`` the first that many training prompts also get a reply sampled from the
    SFT model (generated here, or read from the replies cache) as a seventh candidate."""
    pm = ctx.cfg.pm
    feedback = pm_feedback(ctx.cfg)
    val_file = (pair_groups(load_preferences(pm.val_path, pm.data_format)) if pm.val_path and feedback != "world"
                else None)
    if feedback == "data":
        train = (pair_groups(load_preferences(pm.data_path, pm.data_format)) if pm.data_path
                 else multi_response_groups(load_multi_response(pm.multi_response_path)))
        if val_file is None:
            raise ValueError("pm.val_path: real preference data needs a held-out preference file")
        return train, val_file, None
    if feedback == "judge":
        groups = judge_feedback(ctx, sft)
        source = "pm.prompts_path" if pm.prompts_path else "the SFT data's prompts"
        split = split_prompts(len(groups), pm.n_prompts, pm.n_val_prompts, source, val_elsewhere=val_file is not None)
        if split.note:
            print(f"PM: {split.note}", flush=True)
        train = [g for g in groups[: split.n_train] if g.pairs]
        val = val_file if val_file is not None else [g for g in groups[split.n_train:] if g.pairs]
        if not train or not val:
            raise ValueError(f"pm.feedback=judge: the {pm.judge} judge decided no pair among the "
                             f"{'training' if not train else 'held-out'} prompts' candidates")
        return train, val, None
    world, seed = ctx.world, ctx.cfg.seed
    labeller = AIFeedbackLabeller(pm.labeller_temperature, seed=seed)
    rng = random.Random(f"pm:{seed}")
    prompts = world.prompts("train", pm.n_prompts, offset=1000)
    if not 0 <= pm.sft_samples <= len(prompts):
        raise ValueError(f"pm.sft_samples: {pm.sft_samples}; between 0 and pm.n_prompts ({len(prompts)})")
    if pm.sft_samples:
        with tqdm(total=pm.sft_samples, desc="pm: SFT samples") as bar:
            samples = generate_with(ctx, sft.path, {"pm-sft-samples": Job(prompts[:pm.sft_samples])},
                                    "pm-samples", bar, stage="pm")["pm-sft-samples"]
        # the samples' pairs come from their own labeller stream: the sources' labels stay the same
        train = world_groups(world, prompts, labeller, rng, [[s] for s in samples],
                             AIFeedbackLabeller(pm.labeller_temperature, seed=seed + 7919))
    else:
        train = world_groups(world, prompts, labeller, rng)
    val_prompts = world.prompts("val", pm.n_val_prompts)
    val = world_groups(world, val_prompts, labeller, rng)
    gold = [[world.judge(p, c) for c in g.candidates] for p, g in zip(val_prompts, val)]
    return train, val, gold


def held_out_accuracy(group: RoleGroup, val: list[tuple[list[list[int]], list[tuple[int, int]]]],
             gold: list[list[float]] | None, batch_size: int) -> dict[str, float]:
    """Pairwise accuracy against the labels, and agreement with the gold judge on every candidate
    pair the gold judge does not tie."""
    flat = [seq for cands, _ in val for seq in cands]
    scores = group.map_sharded("score", flat, batch_size=batch_size)
    right, n_pairs, agree, decided, pos = 0, 0, 0, 0, 0
    for i, (cands, pairs) in enumerate(val):
        s = scores[pos: pos + len(cands)]
        pos += len(cands)
        right += sum(s[c] > s[r] for c, r in pairs)
        n_pairs += len(pairs)
        if gold is not None:
            for a, b in itertools.combinations(range(len(cands)), 2):
                if gold[i][a] != gold[i][b]:
                    decided += 1
                    agree += (s[a] > s[b]) == (gold[i][a] > gold[i][b])
    out = {"val_accuracy": right / max(n_pairs, 1), "val_pairs": float(n_pairs)}
    if gold is not None:
        out["gold_agreement"] = agree / max(decided, 1)
    return out


def pm_stage(ctx: RunContext, sft: Artifact | None = None) -> Artifact:
    """The preference model for this config: from the cache, or trained now from the SFT model."""
    cfg = ctx.cfg
    sft = sft or sft_stage(ctx)
    payload = pm_payload(ctx, sft)
    key = ctx.cache_key("pm", payload)

    def build() -> Artifact:
        tokenizer = load_tokenizer(str(sft.path))

        def encode(groups: list[ComparisonGroup]) -> list[tuple[list[list[int]], list[tuple[int, int]]]]:
            return [(scored_sequences(tokenizer, [g.context] * len(g.candidates), g.candidates, cfg.pm.max_length,
                                      cfg.pm.context_turns), list(g.pairs)) for g in groups]

        group = ctx.group(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads, "pm")
        try:  # the actors start while the comparisons are collected, labelled and encoded
            train, val, gold = comparison_groups(ctx, sft)
            train_seqs, val_seqs = encode(train), encode(val)
            steps = total_steps(len(train_seqs), cfg.pm.trainer)
            use_gpu = cfg.ray.preference.num_gpus > 0
            n_params = group.call("init_model", str(sft.path), cfg.pm.drop_last_layer, strategy_spec(cfg, use_gpu),
                                  optim_config(cfg.pm.trainer, steps), cfg.seed, lora_spec(cfg))[0]
            info: dict[str, Any] = {"trainable_params": n_params, "train_groups": len(train_seqs),
                                    "train_pairs": sum(len(p) for _, p in train_seqs)}
            ckpts = Checkpoints.of(ctx, "pm", key, cfg.pm.trainer)
            info["train"] = train_loop(group, "pm_step", train_seqs, cfg.pm.trainer, ctx.tracker, "pm", "n", cfg.seed,
                                       checkpoints=ckpts)
            info["eval"] = held_out_accuracy(group, val_seqs, gold, cfg.eval.batch_size)
            return commit_trained(ctx.cache, "pm", key, payload, group, info, "preference model", ckpts)
        finally:
            group.shutdown()

    return ctx.stage("pm", key, "preference model", build)


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=pm``: train (or reuse) the preference model and report its accuracy."""
    art = pm_stage(ctx)
    ev = art.info["eval"]
    metrics = {f"pm/{k}": v for k, v in ev.items()}
    ctx.tracker.log(metrics)
    ctx.tracker.summary(metrics)
    print("\nPreference model on held-out pairs:")
    print(f"  accuracy vs AI-feedback labels  {ev['val_accuracy']:.3f}  ({int(ev['val_pairs'])} pairs)")
    if "gold_agreement" in ev:
        print(f"  agreement with the gold judge   {ev['gold_agreement']:.3f}")
    print(f"  checkpoint: {art.path}{' (cached)' if art.cached else ''}")
    return {"pm": {"checkpoint": str(art.path), "cached": art.cached, "val_accuracy": ev["val_accuracy"],
                   "gold_agreement": ev.get("gold_agreement"), "train_pairs": art.info["train_pairs"]}}
