"""Seconds per PPO iteration on random-weight Llama models: the lab (on Ray actors, and the same
maths in one process) against TRL's PPOTrainer (``trl.experimental.ppo``) on identical settings.

One iteration: 32 rollouts, prompts of 32 random tokens, exactly 64 new tokens, fp32, 2 torch
threads, one epoch and one optimizer step per trainable model; it covers generation, the
reference, critic and preference-model passes, advantages and both updates.

    python benchmarks/ppo_iteration.py --config tiny --runner ray local trl
    python benchmarks/ppo_iteration.py --config medium --iters 6
    python benchmarks/ppo_iteration.py --runner ray --ranks 2 --threads 1   # 2 ranks per role, 1 thread each
    python benchmarks/ppo_iteration.py --runner ray trl --threads 1 --update-threads 2   # the tiny default's layout

Prints the median seconds per iteration after ``--warmup`` iterations, the per-phase breakdown
(the lab only; TRL does not time its phases) and rollouts/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "medium": dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                   num_attention_heads=8),
}
BATCH, PROMPT_LEN, NEW_TOKENS, THREADS = 32, 32, 64, 2


def make_models(config: str, root: Path) -> tuple[Path, Path]:
    """Random-weight policy (= reference) and value model (= critic init = preference model),
    saved with a tokenizer whose vocabulary fits the model's."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from alignment.models.tokenizer import train_bpe
    from alignment.world import World, WorldSpec

    arch = CONFIGS[config]
    tok = train_bpe(World(WorldSpec(seed=0)).corpus(400), arch["vocab_size"])
    common = dict(arch, vocab_size=max(arch["vocab_size"], len(tok)), num_key_value_heads=arch["num_attention_heads"],
                  max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=None,
                  eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    policy_dir, value_dir = root / "policy", root / "value"
    LlamaForCausalLM(LlamaConfig(**common)).save_pretrained(policy_dir)
    LlamaForSequenceClassification(LlamaConfig(**common, num_labels=1)).save_pretrained(value_dir)
    for d in (policy_dir, value_dir):
        tok.save_pretrained(d)
    return policy_dir, value_dir


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, PROMPT_LEN), generator=g).tolist()


def run_lab(policy_dir: Path, value_dir: Path, iters: int, local: bool, ranks: int = 1, threads: int = THREADS,
            update_threads: int = 0) -> dict:
    """The lab's PPO iteration, on Ray actors (``ranks`` per role, ``threads`` torch threads each,
    ``update_threads`` for the policy's update: 0 keeps ``threads``)
    or (``local``) on the same classes in this process."""
    from alignment.models.tokenizer import load_tokenizer
    from experiments.config import ActorResources, LabConfig, cluster_args
    from experiments.runtime.cache import ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer, PromptBatch

    torch.set_num_threads(threads)
    cfg = LabConfig(stage="ppo")
    cfg.logger.wandb = False
    a = cfg.algo
    a.iterations, a.rollout_batch_size, a.num_threads = iters, BATCH, threads
    a.policy_update_threads = update_threads
    a.max_new_tokens = NEW_TOKENS
    cfg.strategy.precision = "fp32"
    for role in ("policy", "critic", "reference", "preference"):
        setattr(cfg.ray, role, ActorResources(num_actors=1 if local else ranks, num_cpus=0.25))
    if not local:
        from actors.session import init_ray

        cfg.ray.include_dashboard = False
        init_ray(**cluster_args(cfg.ray))
    tmp = Path(tempfile.mkdtemp())
    ctx = RunContext(cfg, tmp, ArtifactCache(tmp / "cache"), tracker=None, run_tag="bench")  # type: ignore[arg-type]
    roles = start_roles(ctx, policy_dir, value_dir, local=local)
    tokenizer = load_tokenizer(str(policy_dir))
    vocab = len(tokenizer)

    class Bench(PPOTrainer):
        def prompt_batch(self, iteration: int):
            return PromptBatch(random_prompts(BATCH, vocab, iteration))

    trainer = Bench(ctx, roles, tokenizer)
    trainer.rollout_spec = dataclasses.replace(trainer.rollout_spec, ignore_eos=True)  # exactly NEW_TOKENS
    rows, walls = [], []
    try:
        # the training loop's own schedule: each rollout overlaps the previous critic update. The
        # time between two yields is one iteration's (the first covers two, the last only the final
        # critic update, which is dropped).
        last = time.perf_counter()
        for row in trainer.iterate(iters):
            now = time.perf_counter()
            rows.append(row)
            walls.append(now - last)
            last = now
    finally:
        roles.shutdown()
        ctx.close()
    lengths = {r["ppo/response_length"] for r in rows}
    assert lengths == {float(NEW_TOKENS)}, f"responses were not {NEW_TOKENS} tokens: {lengths}"
    return {"iteration_s": walls[:-1],
            "phases": {k: [r[f"time/{k}_s"] for r in rows] for k in ("generate", "score", "train")}}


def run_trl(policy_dir: Path, value_dir: Path, iters: int) -> dict:
    """TRL 1.9's PPOTrainer on the same models and settings; iteration times from a callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from alignment.models.tokenizer import load_tokenizer

    torch.set_num_threads(THREADS)
    tok = load_tokenizer(str(policy_dir))

    def causal():
        m = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True)
        m.generation_config.eos_token_id = None  # exactly NEW_TOKENS new tokens, as in the lab's run
        m.generation_config.pad_token_id = tok.pad_token_id
        return m

    def value():
        return AutoModelForSequenceClassification.from_pretrained(value_dir, num_labels=1, local_files_only=True)

    data = Dataset.from_dict({"input_ids": random_prompts(BATCH * iters, len(tok), 0)})
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    out = tempfile.mkdtemp()
    args = PPOConfig(
        output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=1, total_episodes=BATCH * iters, response_length=NEW_TOKENS,
        local_rollout_forward_batch_size=BATCH, num_sample_generations=0, report_to=[], use_cpu=True,
        bf16=False, fp16=False, learning_rate=1e-6, kl_coef=0.02, cliprange=0.2, stop_token=None,
        missing_eos_penalty=None, temperature=1.0, save_strategy="no", logging_steps=10**6,
        dataloader_num_workers=0, seed=0,
    )
    trainer = PPOTrainer(args=args, processing_class=tok, model=causal(), ref_model=causal(), reward_model=value(),
                         train_dataset=data, value_model=value(), callbacks=[Clock()])
    trainer.train()
    if len(stamps) != iters + 1:
        raise RuntimeError(f"expected {iters} TRL steps, timed {len(stamps) - 1}")
    return {"iteration_s": [b - a for a, b in zip(stamps, stamps[1:])], "phases": {}}


def summarise(name: str, result: dict, warmup: int) -> dict:
    times = result["iteration_s"][warmup:]
    med = statistics.median(times)
    out = {"runner": name, "median_s": med, "rollouts_per_s": BATCH / med, "n": len(times)}
    out["phases"] = {k: statistics.median(v[warmup:]) for k, v in result["phases"].items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--runner", nargs="+", choices=["ray", "local", "trl"], default=["ray", "local", "trl"])
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=1, help="lab on Ray: actors per role (data parallel)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="lab: torch threads per actor (with several actors per phase, 1 avoids oversubscribing)")
    parser.add_argument("--update-threads", type=int, default=0,
                        help="lab: torch threads of the policy's update, which runs alone (0: --threads)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = Path(tempfile.mkdtemp())
    policy_dir, value_dir = make_models(args.config, root)
    summary = []
    for runner in args.runner:
        if runner == "trl":
            result = run_trl(policy_dir, value_dir, args.iters)
        else:
            local = runner == "local"
            result = run_lab(policy_dir, value_dir, args.iters, local, args.ranks, args.threads, args.update_threads)
            if not local and args.ranks > 1:
                runner = f"ray x{args.ranks}"
        summary.append(summarise(runner, result, args.warmup))
        print(json.dumps(summary[-1]), flush=True)
    print(f"\nPPO iteration, {args.config} config: {BATCH} rollouts x {NEW_TOKENS} new tokens, prompts of "
          f"{PROMPT_LEN}, fp32, {THREADS} threads ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__})")
    print(f"{'runner':<8}{'median s/iter':>15}{'rollouts/s':>12}   phases (generate / score / train)")
    for s in summary:
        ph = s["phases"]
        phases = " / ".join(f"{ph[k]:.2f}" for k in ("generate", "score", "train")) if ph else "n/a"
        print(f"{s['runner']:<8}{s['median_s']:>15.3f}{s['rollouts_per_s']:>12.1f}   {phases}")
    by = {s["runner"]: s["median_s"] for s in summary}
    if "trl" in by:
        for r in by:
            if r != "trl":
                print(f"lab ({r}) / TRL time per iteration: {by[r] / by['trl']:.2f}")
    if "ray" in by and "local" in by:
        print(f"Ray overhead: ray / in-process time per iteration: {by['ray'] / by['local']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
