"""Preference-model driver: SFT (cached) → AI-feedback pairs → pairwise training on the
preference actor → validation accuracy and gold agreement. ``+experiment=pm``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from actors.group import RoleGroup, shard
from actors.preference import PreferenceActor
from alignment.atomic import write_json
from alignment.data.loaders import PreferencePair, load_multi_response, load_preference_pairs
from alignment.data.preference import multi_response_pairs, world_pairs
from alignment.models.tokenizer import load_tokenizer
from alignment.sequences import scored_sequence
from alignment.world import AIFeedbackLabeller
from experiments.context import RunContext
from experiments.loop import optim_config, total_steps, train_loop
from experiments.sft import EVAL_FILE, Artifact, _plain, sft_stage, strategy_spec


def pm_payload(ctx: RunContext, sft: Artifact) -> dict[str, Any]:
    cfg = ctx.cfg
    return {"pm": _plain(cfg.pm), "world": _plain(cfg.data.world), "strategy": _plain(cfg.strategy),
            "seed": cfg.seed, "sft": str(sft.path)}


def preference_pairs(ctx: RunContext) -> tuple[list[PreferencePair], list[PreferencePair], list[float] | None]:
    """Training pairs, validation pairs and, on the world, the gold margin of each val pair."""
    pm = ctx.cfg.pm
    if pm.data_path or pm.multi_response_path:
        train = (load_preference_pairs(pm.data_path) if pm.data_path
                 else multi_response_pairs(load_multi_response(pm.multi_response_path)))
        if not pm.val_path:
            raise ValueError("pm.val_path: real preference data needs a held-out preference JSONL")
        return train, load_preference_pairs(pm.val_path), None
    world, seed = ctx.world, ctx.cfg.seed
    labeller = AIFeedbackLabeller(pm.labeller_temperature, seed=seed)
    rng = random.Random(f"pm:{seed}")
    train = world_pairs(world, world.prompts("train", pm.n_prompts, offset=1000), labeller, rng)
    val_prompts = world.prompts("val", pm.n_val_prompts)
    val: list[PreferencePair] = []
    gold_margins: list[float] = []
    for prompt in val_prompts:
        pairs = world_pairs(world, [prompt], labeller, rng)
        val.extend(pairs)
        gold_margins.extend(world.judge(prompt, p.chosen) - world.judge(prompt, p.rejected) for p in pairs)
    return train, val, gold_margins


def validate(group: RoleGroup, seqs: list[tuple[list[int], list[int]]], gold_margins: list[float] | None,
             batch_size: int) -> dict[str, float]:
    """Pairwise accuracy against the labels, and agreement with the gold judge (gold ties left out)."""
    flat = [c for c, _ in seqs] + [r for _, r in seqs]
    scores = [s for part in group.call_sharded("score", shard(flat, group.size), batch_size=batch_size)
              for s in part]
    margins = [c - r for c, r in zip(scores[: len(seqs)], scores[len(seqs):])]
    out = {"val_accuracy": sum(m > 0 for m in margins) / len(margins), "val_pairs": float(len(margins))}
    if gold_margins is not None:
        decided = [(m, g) for m, g in zip(margins, gold_margins) if g != 0]
        out["gold_agreement"] = sum((m > 0) == (g > 0) for m, g in decided) / max(len(decided), 1)
    return out


def pm_stage(ctx: RunContext, sft: Artifact | None = None) -> Artifact:
    """The preference model for this config: from the cache, or trained now from the SFT model."""
    cfg = ctx.cfg
    sft = sft or sft_stage(ctx)
    payload = pm_payload(ctx, sft)
    key = ctx.cache_key("pm", payload)
    hit = ctx.cache.get("pm", key) if cfg.use_cache else None
    if hit is not None:
        print(f"PM: reusing cached preference model {hit}", flush=True)
        import json

        return Artifact(hit, True, json.loads((hit / EVAL_FILE).read_text()))
    tokenizer = load_tokenizer(str(sft.path))
    train, val, gold_margins = preference_pairs(ctx)

    def encode(pairs: list[PreferencePair]) -> list[tuple[list[int], list[int]]]:
        return [(scored_sequence(tokenizer, p.context, p.chosen, cfg.pm.max_length),
                 scored_sequence(tokenizer, p.context, p.rejected, cfg.pm.max_length)) for p in pairs]

    train_seqs, val_seqs = encode(train), encode(val)
    steps = total_steps(len(train_seqs), cfg.pm.trainer)
    group = RoleGroup(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads,
                      run_tag=ctx.run_tag)
    try:
        use_gpu = cfg.ray.preference.num_gpus > 0
        n_params = group.call("init_model", str(sft.path), cfg.pm.drop_last_layer, strategy_spec(cfg, use_gpu),
                              optim_config(cfg.pm.trainer, steps), cfg.seed)[0]
        info: dict[str, Any] = {"trainable_params": n_params, "train_pairs": len(train_seqs)}
        info["train"] = train_loop(group, "pm_step", train_seqs, cfg.pm.trainer, ctx.tracker, "pm", "n", cfg.seed)
        info["eval"] = validate(group, val_seqs, gold_margins, cfg.eval.batch_size)
        with ctx.cache.put("pm", key, payload) as tmp:
            group.call("save", str(tmp))
            write_json(tmp / EVAL_FILE, info)
    finally:
        group.shutdown()
    path = ctx.cache.path("pm", key)
    print(f"PM: preference model written to {path}", flush=True)
    return Artifact(Path(path), False, info)


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
