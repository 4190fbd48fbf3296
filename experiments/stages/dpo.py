"""DPO driver (Rafailov et al., 2023): SFT → preference model → DPO on the preference model's own
labelled pairs, with the SFT model as the starting point and the frozen reference → evaluation
against SFT, judged like PAT and PPO. ``+experiment=dpo``.

The preference model is trained as usual: its labelled comparisons are the pairs DPO learns
from directly, and it is one of the judges of the evaluation. Each (context, reply) is encoded
the way the policy generates it (``alignment.sequences.reply_sequences``); the reference's
log-probs of every candidate are computed once, before training; the loss is a name in
``alignment.losses.registry.PREFERENCE_LOSSES`` (``dpo.loss``)."""

from __future__ import annotations

import itertools
import time
from typing import Any

from tqdm.auto import tqdm

from actors.policy import DPOPair, DPOSpec, PolicyActor
from actors.reference import ReferenceActor
from alignment.data.batching import shard
from alignment.data.preference import ComparisonGroup
from alignment.losses.dpo import sequence_logps
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import pack
from alignment.sequences import reply_sequences
from experiments.config import as_key
from experiments.evaluation.head_to_head import method_metrics
from experiments.evaluation.replies import Job
from experiments.evaluation.versus_sft import method_run_results, publish, versus_sft
from experiments.reports.report import print_win_rates
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.runtime.loop import Checkpoints, commit_trained, total_steps, train_loop
from experiments.runtime.specs import model_spec, optim_config, strategy_spec
from experiments.stages.pm import comparison_groups, pm_payload, pm_stage
from experiments.stages.sft import sft_stage

Rows = list[tuple[list[int], list[int], list[int]]]  # prompt ids, reply ids, the reply's mask
PM_TRAINING_ONLY = ("trainer", "drop_last_layer", "max_length", "context_turns")  # change the PM, not its pairs


def dpo_key(ctx: RunContext, sft: Artifact) -> tuple[str, dict[str, Any]]:
    """The cache key of the DPO policy for this config: the DPO settings, the SFT model, the source
    of the preference model's labelled pairs, seed and strategy."""
    cfg = ctx.cfg
    pairs = pm_payload(ctx, sft)
    pairs["pm"] = {k: v for k, v in pairs["pm"].items() if k not in PM_TRAINING_ONLY}
    payload = {"dpo": as_key(cfg.dpo), "pairs": pairs, "lora": as_key(cfg.model.lora), "strategy": as_key(cfg.strategy),
               "seed": cfg.seed, "sft": str(sft.path)}
    return ctx.cache_key("dpo", payload), payload


def encode_groups(tokenizer: Any, groups: list[ComparisonGroup], max_length: int) -> list[Rows]:
    """Each group's candidates as (prompt ids, reply ids, mask), as the policy would generate them (the
    mask leaves out what a tool wrote in a plugin reply)."""
    return [reply_sequences(tokenizer, [g.context] * len(g.candidates), g.candidates, max_length, with_masks=True)
            for g in groups]


def reference_logps(ref: Any, rows: Rows, pad_id: int, batch_size: int) -> list[float]:
    """Summed log-prob of each row's reply under the reference: batches of ``batch_size`` rows per
    rank, all submitted at once (each rank works through its queue)."""
    pending = []
    for start in range(0, len(rows), batch_size * ref.size):
        shares = shard(rows[start:start + batch_size * ref.size], ref.size)
        # a rank without rows (the short last batch) scores one row, dropped below
        parts = [pack([p for p, _, _ in s], [r for _, r, _ in s], [[0.0] * len(r) for _, r, _ in s], pad_id,
                      [m for _, _, m in s]) for s in (share or rows[:1] for share in shares)]
        pending.append((ref.submit("logprobs", [(p,) for p in parts]), parts, [len(s) for s in shares]))
    out: list[float] = []
    with tqdm(total=len(rows), desc="dpo: reference log-probs", unit="seq", dynamic_ncols=True) as bar:
        for submitted, parts, counts in pending:
            for part, lp, n in zip(parts, ref.wait(submitted), counts):
                out.extend(sequence_logps(lp, part.response_mask).tolist()[:n])
                bar.update(n)
    return out


def dpo_pairs(groups: list[ComparisonGroup], seqs: list[Rows], ref: list[float]) -> list[DPOPair]:
    """Every labelled pair of every group, with its replies' tokens and reference log-probs."""
    pairs, pos = [], 0
    for g, rows in zip(groups, seqs):
        for c, r in g.pairs:
            pairs.append(DPOPair(rows[c], rows[r], ref[pos + c], ref[pos + r]))
        pos += len(rows)
    return pairs


def group_batches(sizes: list[int]):
    """A ``train_loop`` batcher for pairs laid out group after group (``sizes``: each group's pair
    count): each epoch shuffles the groups and the pairs within each, and keeps a group's pairs
    together, so a batch holds few prompts' candidates, each scored once per step (15 pairs of 6
    candidates cost 6 sequences, not 30), as the preference model's groups are batched."""
    starts = [0, *itertools.accumulate(sizes)][:-1]

    def batches(items: list[Any], batch_size: int, rng: Any):
        order = []
        for g in rng.sample(range(len(sizes)), len(sizes)):
            order += rng.sample(range(starts[g], starts[g] + sizes[g]), sizes[g])
        for start in range(0, len(order), batch_size):
            yield [items[i] for i in order[start:start + batch_size]]

    return batches


def dpo_stage(ctx: RunContext, sft: Artifact) -> Artifact:
    """The DPO policy for this config: from the cache, or trained now on the PM's labelled pairs."""
    cfg, d = ctx.cfg, ctx.cfg.dpo
    key, payload = dpo_key(ctx, sft)

    def build() -> Artifact:
        tokenizer = load_tokenizer(str(sft.path))
        # both groups start, and load the SFT model, while this process collects and encodes the pairs
        ref = ctx.group(ReferenceActor, "reference", cfg.ray.reference, d.trainer.num_threads, "dpo")
        group = ctx.group(PolicyActor, "policy", cfg.ray.policy, d.trainer.num_threads, "dpo")
        try:
            ref_loading = ref.submit("init_model", path=str(sft.path),
                                     strategy=strategy_spec(cfg, cfg.ray.reference.num_gpus > 0))
            train, _, _ = comparison_groups(ctx, sft)
            groups = [g for g in (train if d.n_prompts < 0 else train[: d.n_prompts]) if g.pairs]
            if not groups:
                raise ValueError("dpo: the preference model's training groups hold no labelled pair")
            seqs = encode_groups(tokenizer, groups, d.max_length)
            n_pairs = sum(len(g.pairs) for g in groups)
            steps = total_steps(n_pairs, d.trainer)
            loading = group.submit("init_model", spec=model_spec(cfg, sft.path, str(sft.path)),
                                   strategy=strategy_spec(cfg, cfg.ray.policy.num_gpus > 0),
                                   optim=optim_config(d.trainer, steps))
            ref.wait(ref_loading)
            ref_logps = reference_logps(ref, [row for rows in seqs for row in rows], tokenizer.pad_token_id,
                                        cfg.eval.batch_size)
            ref.shutdown()
            pairs = dpo_pairs(groups, seqs, ref_logps)
            group.wait(loading)
            info: dict[str, Any] = {"groups": len(groups), "pairs": len(pairs), "loss": d.loss, "beta": d.beta}
            started = time.time()
            info["train"] = train_loop(group, "dpo_step", pairs, d.trainer, ctx.tracker, "dpo", "pairs", cfg.seed,
                                       batcher=group_batches([len(g.pairs) for g in groups]),
                                       call_kwargs={"spec": DPOSpec(loss=d.loss, beta=d.beta)},
                                       checkpoints=(ckpts := Checkpoints.of(ctx, "dpo", key, d.trainer)))
            info["train_seconds"] = time.time() - started
            return commit_trained(ctx.cache, "dpo", key, payload, group, info, "policy", ckpts)
        finally:
            ref.shutdown()
            group.shutdown()

    return ctx.stage("dpo", key, "policy", build)


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=dpo``: the chain (SFT, preference model), DPO, then DPO vs SFT."""
    cfg = ctx.cfg
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    dpo = dpo_stage(ctx, sft)

    v = versus_sft(ctx, "dpo", dpo, sft, pm, {"dpo": Job(ctx.test_prompts)})
    results = method_run_results(
        ctx, v, "dpo", dpo, sft, pm, {"val_accuracy": pm.info["eval"]["val_accuracy"]},
        {"dpo": {"loss": cfg.dpo.loss, "beta": cfg.dpo.beta, "groups": dpo.info["groups"], "pairs": dpo.info["pairs"],
                 "final": dpo.info["train"], "train_seconds": dpo.info.get("train_seconds")}})
    return publish(ctx, results, method_metrics(results), print_summary)


def print_summary(results: dict[str, Any]) -> None:
    d = results["dpo"]
    print(f"\nDPO ({d['loss']}, beta {d['beta']}, {d['pairs']} pairs) on held-out test prompts")
    print_win_rates(results)
    if "gold" in results:
        print("  mean gold: " + ", ".join(f"{k.upper()} {v:.3f}" for k, v in results["gold"].items()))
    final = d["final"]
    if "dpo/reward_accuracy" in final:
        print(f"  last step: loss {final['dpo/loss']:.3f}, reward accuracy {final['dpo/reward_accuracy']:.3f}, "
              f"margin {final['dpo/margin']:.3f}")
