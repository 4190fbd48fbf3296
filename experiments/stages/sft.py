"""SFT driver: tokenizer → supervised fine-tuning on a policy actor → gold evaluation.

``sft_stage`` is the cached stage later drivers (PM, PAT, PPO) chain from; ``run`` is
``python run.py +experiment=sft``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from actors.group import RoleGroup
from actors.policy import PolicyActor
from alignment.data.batching import bucketed_batches
from alignment.data.formats import FilePrompt
from alignment.evaluation import gold_report, source_reference
from alignment.loss_mask import Encoded, LossPolicy, encode_many, truncate
from alignment.models.tokenizer import load_tokenizer, train_bpe
from alignment.world import WorldPrompt
from experiments.config import LabConfig, as_key
from experiments.evaluation.replies import Job, generate, generate_with, replies_key, save_replies
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.runtime.engines import uses_vllm
from experiments.runtime.loop import Checkpoints, commit_trained, total_steps, train_loop
from experiments.runtime.specs import model_spec, optim_config, strategy_spec


def tokenizer_stage(ctx: RunContext) -> Path:
    """The tokenizer directory: the checkpoint's own, or a BPE trained on the world (cached)."""
    cfg = ctx.cfg
    if cfg.model.name == "pretrained":
        if not cfg.model.path or not Path(cfg.model.path).is_dir():
            raise FileNotFoundError(f"model.path: {cfg.model.path!r} is not a local checkpoint directory")
        if cfg.model.chat_format != "template":
            return Path(cfg.model.path)
        # the checkpoint's tokenizer, marked to speak its chat template (every later stage loads it so)
        payload = {"path": str(Path(cfg.model.path).resolve()), "chat_format": "template", "with_model": True}
        key = ctx.cache_key("tokenizer", payload)
        if ctx.cache.get("tokenizer", key) is None:
            with ctx.cache.put("tokenizer", key, payload) as tmp:
                load_tokenizer(cfg.model.path, "template").save_pretrained(tmp)
                # the checkpoint's own files beside it: the directory is the untrained model in the
                # template format too (``base_model``)
                for f in Path(cfg.model.path).resolve().iterdir():
                    if f.is_file() and not (tmp / f.name).exists() and not f.name.startswith("tokenizer"):
                        (tmp / f.name).symlink_to(f)
        return ctx.cache.path("tokenizer", key)

    if cfg.model.name != "tiny":
        raise ValueError(f"model.name: unknown model {cfg.model.name!r}; choose 'tiny' or 'pretrained'")
    payload = {"world": as_key(cfg.data.world), "vocab_size": cfg.model.vocab_size}
    payload["world"].pop("sft_source_weights")
    key = ctx.cache_key("tokenizer", payload)
    hit = ctx.cache.get("tokenizer", key)
    if hit is not None:
        return hit
    with ctx.cache.put("tokenizer", key, payload) as tmp:
        train_bpe(ctx.world.corpus(), cfg.model.vocab_size).save_pretrained(tmp)
    return ctx.cache.path("tokenizer", key)


def base_model(ctx: RunContext) -> Path | None:
    """The untrained pretrained checkpoint as a policy directory in the run's chat format (the
    ``base`` baseline), or ``None`` for a model trained from scratch (``model=tiny``)."""
    if ctx.cfg.model.name != "pretrained":
        return None
    return tokenizer_stage(ctx) if ctx.cfg.model.chat_format == "template" else Path(ctx.cfg.model.path)


def sft_payload(cfg: LabConfig, tokenizer_dir: Path) -> dict[str, Any]:
    """The config subset that determines the SFT checkpoint (its cache key)."""
    return {"model": as_key(cfg.model), "data": as_key(cfg.data), "trainer": as_key(cfg.trainer),
            "strategy": as_key(cfg.strategy), "seed": cfg.seed, "tokenizer": str(tokenizer_dir)}


def sft_examples(cfg: LabConfig, ctx: RunContext, tokenizer) -> list[Encoded]:
    policy = LossPolicy.from_names(cfg.data.loss_on, cfg.data.last_turn_only)
    return [truncate(e, cfg.data.max_length) for e in encode_many(ctx.sft_conversations(), tokenizer, policy)]


def evaluate_policy(ctx: RunContext, group: RoleGroup, prompts: list[WorldPrompt] | list[FilePrompt],
                    ) -> tuple[dict[str, Any], list[str]]:
    """Generate on held-out test ``prompts`` and score with the gold judge (on the world's prompts):
    the report and the replies."""
    replies = generate(ctx, group, prompts)
    on_world = all(isinstance(p, WorldPrompt) for p in prompts)
    report: dict[str, Any] = gold_report(ctx.world, prompts, replies) if on_world else {"gold": None}
    report["samples"] = [{"prompt": p.text, "reply": r} for p, r in list(zip(prompts, replies))[:8]]
    return report, replies


def sft_stage(ctx: RunContext) -> Artifact:
    """The SFT checkpoint for this config: from the cache, or trained now and cached."""
    cfg = ctx.cfg
    tok_dir = tokenizer_stage(ctx)
    payload = sft_payload(cfg, tok_dir)
    key = ctx.cache_key("sft", payload)

    def build() -> Artifact:
        tokenizer = load_tokenizer(str(tok_dir))
        group = ctx.group(PolicyActor, "policy", cfg.ray.policy, cfg.trainer.num_threads, "sft")  # starts meanwhile
        try:
            examples = sft_examples(cfg, ctx, tokenizer)
            steps = total_steps(len(examples), cfg.trainer)
            use_gpu = cfg.ray.policy.num_gpus > 0
            n_params = group.call("init_model", model_spec(cfg, tok_dir), strategy_spec(cfg, use_gpu),
                                  optim_config(cfg.trainer, steps))[0]
            info: dict[str, Any] = {"trainable_params": n_params, "n_examples": len(examples)}
            # on world data the stage's own evaluation stays on the world's test prompts (its cache
            # key holds no eval.*); on a data file, on the run's held-out prompts
            prompts = ctx.world.prompts("test", cfg.eval.n_prompts) if cfg.data.source == "world" else ctx.test_prompts
            if cfg.eval.evaluate_init:
                info["init"], _ = evaluate_policy(ctx, group, prompts)
            started = time.time()
            ckpts = Checkpoints.of(ctx, "sft", key, cfg.trainer)
            info["train"] = train_loop(group, "sft_step", examples, cfg.trainer, ctx.tracker, "sft", "tokens",
                                       cfg.seed, batcher=bucketed_batches, checkpoints=ckpts)
            info["train_seconds"] = time.time() - started
            info["eval"], replies = evaluate_policy(ctx, group, prompts)
            info["sources"] = source_reference(ctx.world, prompts, cfg.seed) if info["eval"]["gold"] is not None else []
            art = commit_trained(ctx.cache, "sft", key, payload, group, info, "checkpoint", ckpts)
            # the replies join the evaluation-reply cache once the model they belong to is stored,
            # so later head-to-heads of this checkpoint reuse them instead of sampling again (when
            # they come from the engine the head-to-heads use: the training actors sample with hf)
            if not uses_vllm(cfg):
                save_replies(ctx, replies_key(ctx, art.path, Job(prompts)), "eval", art.path, replies)
            return art
        finally:
            group.shutdown()

    return ctx.stage("sft", key, "checkpoint", build)


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=sft``: train (or reuse) the SFT model and report its gold score. A reused model
    is judged on its replies under this run's evaluation settings (``tools.*``: with tools or
    without), from the reply cache or sampled now."""
    art = sft_stage(ctx)
    info = dict(art.info)
    if art.cached and info["eval"]["gold"] is not None:
        prompts = ctx.world.prompts("test", ctx.cfg.eval.n_prompts)
        replies = generate_with(ctx, art.path, {"sft": Job(prompts)}, "policy")["sft"]
        info["eval"] = gold_report(ctx.world, prompts, replies)
    results = {
        "sft": {"checkpoint": str(art.path), "cached": art.cached, "gold": info["eval"]["gold"],
                "gold_init": info.get("init", {}).get("gold"), "sources": info["sources"],
                "trainable_params": info["trainable_params"], "train_seconds": info.get("train_seconds"),
                "by_category": {k: v for k, v in info["eval"].items() if k.startswith(("gold/", "tool_calls/"))}},
    }
    metrics = {"eval/gold_sft": info["eval"]["gold"], "sft/cached": float(art.cached)}
    if info["eval"]["gold"] is None:  # a prompt file: no gold judge
        del metrics["eval/gold_sft"]
    if "init" in info and info["init"]["gold"] is not None:
        metrics["eval/gold_init"] = info["init"]["gold"]
    metrics.update({f"eval/gold_source_{i}": s for i, s in enumerate(info["sources"])})
    metrics.update({f"eval/sft/{k}": v for k, v in info["eval"].items() if k.startswith(("gold/", "tool_calls/"))})
    ctx.tracker.log(metrics)
    ctx.tracker.summary(metrics)
    rows = [("untrained model", info.get("init", {}).get("gold")), ("SFT model", info["eval"]["gold"])]
    rows += [(f"source {i}", s) for i, s in enumerate(info["sources"])]
    print("\nGold-judge score on held-out test prompts (0..1):")
    for name, value in rows:
        print(f"  {name:<18} {'n/a' if value is None else f'{value:.3f}'}")
    if "tool_calls/all" in info["eval"]:
        e = info["eval"]
        kinds = [k.split("/")[1] for k in e if k.startswith("tool_calls/") and k != "tool_calls/all"]
        print(f"  tool requests: gold {e['gold/tool_use']:.3f}, calls the right tool {e['tool_calls/all']:.3f} ("
              + ", ".join(f"{k} {e[f'tool_calls/{k}']:.3f}" for k in kinds) + ")")
    print(f"  checkpoint: {art.path}{' (cached)' if art.cached else ''}")
    return results
