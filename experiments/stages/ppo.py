"""PPO driver (MOSS §7.2): SFT → preference model → PPO on four Ray roles → evaluation against
SFT, and against PAT when a PAT model of the same upstream stages is cached. ``+experiment=ppo``.

The driver is thin. Each iteration it deals prompts to the policy ranks, hands the rollout
(tensors, through Ray's object store) to the reference, preference-model and critic ranks,
turns their outputs into rewards and whitened advantages with the pure maths of
``alignment/losses``, and asks the trainable roles to update.

The same loop runs GRPO and RLOO (``+experiment=grpo`` / ``rloo``): their presets name a
critic-free advantage estimator (``algo.advantage``), responses per prompt (``algo.group_size``)
and where the KL goes (``algo.kl_in``); no critic role starts, and the policy, its cache stage and
its results are named after the method (``method_name``).

The call path, top down:

    run                          the chain (sft_stage, pm_stage), then ppo_stage, then the evaluation
    └ ppo_stage                  the cached policy, or: start_roles → PPOTrainer → train → commit
      └ PPOTrainer.train         progress bar and logging over iterate
        └ iterate                launch / finish pipelined, checkpoints (save_checkpoint, restore)
          └ launch               one iteration:
              prompt_batch       the prompts (world, the SFT file's, or algo.prompts_path)
              rollout            the policy ranks sample      (actors/policy.py: PolicyActor.rollout), or the
                                 vLLM engines sample and the policy ranks score (experiments/runtime/engines.py)
              score              reference log-probs, PM scores, critic values, side by side
              kl_estimate, normalise_scores, token_rewards      (alignment/losses/kl.py, reward.py)
              ADVANTAGE_ESTIMATORS[algo.advantage]              (alignment/losses/gae.py, group_advantages.py)
              PolicyActor.ppo_update  the clipped surrogate     (alignment/losses/ppo.py), awaited
              sync_engines       vLLM: the new weights into the engines (WeightSync)
              CriticActor.update      the clipped value loss, left running until finish
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from actors.critic import CriticSpec
from actors.policy import PolicyUpdateSpec
from alignment.atomic import atomic_dir, write_json
from alignment.chat_format import Conversation, generation_prompt
from alignment.data.batching import shard
from alignment.data.formats import load_prompts
from alignment.generation import RolloutSpec
from alignment.loss_mask import Encoded
from alignment.losses.gae import AdvantageInputs
from alignment.losses.kl import kl_estimate
from alignment.losses.masked import masked_mean, masked_whiten
from alignment.losses.registry import ADVANTAGE_ESTIMATORS
from alignment.losses.reward import RunningMoments, normalise_scores, penalise_missing_eos, token_rewards
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import Rollout, ended
from alignment.sequences import prompt_ids, scored_sequences
from alignment.tool_use import tool_prompt
from alignment.world import WorldPrompt
from alignment.world.categories.tool_use import called
from experiments.config import PPOConfig, RayConfig, as_key
from experiments.evaluation.equal_kl import print_at_kl, training_path
from experiments.evaluation.head_to_head import method_metrics
from experiments.evaluation.replies import Job, rollouts, tool_rows
from experiments.evaluation.versus_sft import method_run_results, publish, versus_sft
from experiments.reports.report import print_win_rates
from experiments.runtime.cache import INFO_FILE, Artifact
from experiments.runtime.context import RunContext
from experiments.runtime.engines import EngineSync, rollout_key, sample_on_engines, score_samples, sleeps
from experiments.runtime.loop import check_finite, rank_mean
from experiments.runtime.roles import Roles, method_name, start_roles
from experiments.runtime.tracking import RayMetrics
from experiments.stages.pat import pat_key
from experiments.stages.pm import pm_stage
from experiments.stages.sft import sft_examples, sft_stage
from experiments.validation import validate_rl

STATE_FILE = "trainer_state.json"
# what a lost actor raises in the driver: its death, or the loss of an object only it held
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
def check(a: PPOConfig, r: RayConfig) -> None:
    """The loop's settings, checked again where the stage starts (``experiments.validation.validate_rl``)."""
    validate_rl(a, r)


@dataclass
class PromptBatch:
    """One iteration's prompts: token ids for the policy, the conversations for the preference
    model's view (None: score the rollout's own tokens), world prompts for the gold judge."""

    ids: list[list[int]]
    contexts: list[Conversation] | None = None
    world: list[WorldPrompt] | None = None
    tools: list[frozenset[str] | None] | None = None  # per row with ``tools.enabled``: its tools, or None


@dataclass
class PendingIteration:
    """An iteration whose policy update is done and whose critic update may still be running."""

    metrics: dict[str, float]
    critic_refs: list[Any]


class PPOTrainer:
    """The PPO loop over ``roles``: ``step`` runs one iteration; checkpoints make it resumable."""

    def __init__(self, ctx: RunContext, roles: Roles, tokenizer: Any, ckpt_root: Path | None = None,
                 exporter: RayMetrics | None = None):
        self.ctx, self.roles, self.tokenizer = ctx, roles, tokenizer
        self.a: PPOConfig = ctx.cfg.algo
        self.ckpt_root, self.exporter = ckpt_root, exporter
        self.iteration = 0
        self.last_metrics: dict[str, float] = {}  # of the newest finished iteration (kept in the final checkpoint)
        # the training path on the reward-KL plane: KL, reward and gold (world prompts) per iteration
        self.path: list[dict[str, float]] = []
        self.moments = RunningMoments()
        self._file_convs: list[Conversation] | None = None
        self.rollout_spec = RolloutSpec(max_new_tokens=self.a.max_new_tokens, temperature=self.a.temperature,
                                        top_p=self.a.top_p, min_new_tokens=self.a.min_new_tokens)
        self.critic_spec = CriticSpec(value_clip=self.a.value_clip, epochs=self.a.epochs,
                                      mini_batches=self.a.mini_batches)
        self.policy_spec = PolicyUpdateSpec(clip=self.a.clip, epochs=self.a.epochs, mini_batches=self.a.mini_batches,
                                            temperature=self.a.temperature, num_threads=self.a.policy_update_threads,
                                            ptx_coef=self.a.ptx_coef, policy_loss=self.a.policy_loss,
                                            kl_coef=self.a.beta if self.a.kl_in == "loss" else 0.0,
                                            kl_estimator=self.a.kl_estimator)
        self._ptx: list[Encoded] | None = None
        self.sync = EngineSync(ctx.cfg, roles.policy, roles.engines) if roles.engines is not None else None
        # colocated vLLM engines on GPUs sleep from the end of a rollout to the sync after the update: level 2
        # drops their weights (the sync brings them all), level 1 keeps a copy on the CPU (LoRA sends a part)
        self.sleep_level = (1 if self.sync.only_lora else 2) if self.sync is not None and sleeps(ctx.cfg) else 0

    def prompt_batch(self, iteration: int) -> PromptBatch:
        """The iteration's prompts: the next ones of ``algo.prompts_path``, or of the SFT file's
        conversations (``data.source=moss_sft``: their last human turns), in turn; else a fresh,
        deterministic batch of world training prompts. ``rollout_batch_size`` counts responses: the
        batch holds ``rollout_batch_size / group_size`` prompts, each repeated ``group_size`` times
        in consecutive rows (a group)."""
        g = self.a.group_size
        n = self.a.rollout_batch_size // g

        def grouped(items: list[Any]) -> list[Any]:
            return [x for x in items for _ in range(g)]

        if self.a.prompts_path or not self.ctx.world_data:
            if self._file_convs is None:
                self._file_convs = ([p.context for p in load_prompts(self.a.prompts_path, self.a.prompts_format)]
                                    if self.a.prompts_path else self.ctx.sft_conversations())
            convs = self._file_convs
            picked = grouped([convs[(iteration * n + i) % len(convs)] for i in range(n)])
            return PromptBatch([prompt_ids(self.tokenizer, c) for c in picked], picked)
        prompts = grouped(self.ctx.world.prompts("train", n, offset=self.a.prompt_offset + iteration))
        contexts = [p.conversation() for p in prompts]
        tools = tool_rows(self.ctx.cfg, contexts)
        if not any(tools):  # plain replies only
            return PromptBatch([prompt_ids(self.tokenizer, c) for c in contexts], contexts, prompts)
        texts = [tool_prompt(c) if t else generation_prompt(c) for c, t in zip(contexts, tools)]
        return PromptBatch(self.tokenizer(texts, add_special_tokens=False)["input_ids"], contexts, prompts, tools)

    def ptx_batch(self, iteration: int) -> list[Encoded] | None:
        """The iteration's SFT examples for PPO-ptx (None when ``algo.ptx_coef`` is 0): the SFT
        stage's own data, shuffled once by seed and dealt out in turn."""
        if not self.a.ptx_coef:
            return None
        if self._ptx is None:
            examples = sft_examples(self.ctx.cfg, self.ctx, self.tokenizer)
            random.Random(f"ptx:{self.ctx.cfg.seed}").shuffle(examples)
            self._ptx = examples
        n, data = self.a.ptx_batch_size, self._ptx
        return [data[(iteration * n + i) % len(data)] for i in range(n)]

    def rollout(self, batch: PromptBatch) -> tuple[Rollout, list[str], dict[str, float]]:
        """The batch's responses: sampled by the policy ranks, or by the vLLM engines and scored by
        the policy ranks (``experiments.runtime.engines.sample_on_engines``, ``score_samples``); and the
        engines' statistics."""
        policy, engines = self.roles.policy, self.roles.engines
        ranks = max(policy.size, engines.size if engines is not None else 0)  # rank r samples with seed + r
        seed = self.ctx.cfg.seed * 1_000_003 + self.iteration * ranks
        stats: dict[str, float] = {}
        if engines is None:
            outs = rollouts(policy, batch.ids, batch.tools, self.rollout_spec, seed, self.ctx.cfg.tools.max_calls)
        else:
            parts = sample_on_engines(engines, batch.ids, batch.tools, self.rollout_spec, seed,
                                      self.ctx.cfg.tools.max_calls)
            if self.sleep_level:  # the GPUs go to the scoring roles and the update until the sync
                engines.call("sleep", self.sleep_level)
            outs, stats["rollout/logprob_gap"] = score_samples(policy, batch.ids, parts, self.rollout_spec.temperature)
        return (Rollout.cat([o[0] for o in outs], self.tokenizer.pad_token_id),
                [t for o in outs for t in o[1]], stats)

    def sync_engines(self, asleep: bool = True) -> dict[str, float]:
        """After a policy update: its weights into the vLLM engines (none without them). Colocated
        on GPUs the engines slept since the rollout (``asleep``): their weights' memory wakes first,
        then the sync, then the KV cache's."""
        if self.sync is None:
            return {}
        engines = self.roles.engines
        if self.sleep_level and asleep:
            engines.call("wake_up", ["weights"])
        seconds = self.sync.sync()
        if self.sleep_level and asleep:
            engines.call("wake_up", ["kv_cache"])
        return {"time/sync_s": seconds}

    def score(self, ro: Rollout, batch: PromptBatch, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor | None]:
        """Reference log-probs, preference-model scores and critic values (None without a critic),
        from the three roles concurrently. The preference model sees each reply the way it was trained to (its
        ``pm.context_turns`` view of the conversation)."""
        ref, pm, critic = self.roles.reference, self.roles.preference, self.roles.critic
        pm_cfg = self.ctx.cfg.pm
        if batch.contexts is not None:
            seqs = scored_sequences(self.tokenizer, batch.contexts, texts, pm_cfg.max_length, pm_cfg.context_turns)
        else:
            seqs = [s[-pm_cfg.max_length:] for s in ro.token_lists()]
        ref_refs = ref.submit("logprobs", [(p,) for p in ro.split(ref.size)], temperature=self.a.temperature)
        pm_refs = pm.submit("score", [(s,) for s in shard(seqs, pm.size)], batch_size=self.a.rollout_batch_size)
        value_refs = critic.submit("values", [(p,) for p in ro.split(critic.size)]) if critic is not None else None
        ref_logprobs = torch.cat(ref.wait(ref_refs))
        scores = torch.tensor([x for part in pm.wait(pm_refs) for x in part])
        values = torch.cat(critic.wait(value_refs)) if critic is not None else None
        return ref_logprobs, scores, values

    def step(self) -> dict[str, float]:
        """One whole iteration (``launch``, then ``finish``); its metrics."""
        return self.finish(self.launch())

    def launch(self) -> PendingIteration:
        """One iteration up to its policy update: rollout → reference / preference / critic passes
        → rewards (KL-penalised with ``algo.kl_in=reward``) → advantages (the registered
        ``algo.advantage``: GAE, or grpo / rloo over groups, without a critic) → the policy's update
        (plus ``beta`` times the KL with ``algo.kl_in=loss``, the reference log-probs sent along),
        awaited (the next rollout needs the new policy), then the critic's, left running. The
        critic's next call (the next iteration's values) queues behind it on the actor, so the next
        rollout overlaps the critic update and the maths is that of the plain loop; the policy
        updates while every other role waits, so it may use their cores (``algo.policy_update_threads``)."""
        algo = self.a
        t0 = time.perf_counter()
        batch = self.prompt_batch(self.iteration)
        rollout, texts, engine_stats = self.rollout(batch)
        t1 = time.perf_counter()
        ref_logprobs, scores, values = self.score(rollout, batch, texts)
        t2 = time.perf_counter()
        mask = rollout.response_mask
        kl = kl_estimate(rollout.logprobs, ref_logprobs, algo.kl_estimator) * mask
        penalised = penalise_missing_eos(scores, ended(rollout, self.tokenizer.eos_token_id), algo.missing_eos_penalty)
        normed = normalise_scores(penalised, self.moments if algo.normalize_reward else None, algo.reward_clip)
        kl_in_loss = algo.kl_in == "loss"  # then the rewards carry no KL; the policy's loss does
        rewards = token_rewards(normed, kl, mask, 0.0 if kl_in_loss else algo.beta)
        estimator = ADVANTAGE_ESTIMATORS.get(algo.advantage)
        advantages, returns = estimator(AdvantageInputs(rewards=rewards, values=values, mask=mask,
                                                        scores=rewards.sum(1), group_size=algo.group_size,
                                                        gamma=algo.gamma, lam=algo.lam))
        if algo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        policy, critic = self.roles.policy, self.roles.critic
        n_p = policy.size
        ptx = self.ptx_batch(self.iteration)
        ptx_shards = shard(ptx, n_p) if ptx else [None] * n_p
        ref_shards = torch.tensor_split(ref_logprobs, n_p) if kl_in_loss else [None] * n_p
        shares = zip(rollout.split(n_p), torch.tensor_split(advantages, n_p), ptx_shards, ref_shards)
        update_refs = policy.submit("ppo_update", [(part, adv, ptx_part, self.policy_spec, ref)
                                                   for part, adv, ptx_part, ref in shares])
        policy_stats = policy.wait(update_refs)
        engine_stats |= self.sync_engines()  # the next rollout samples from the updated policy
        critic_refs = []
        if critic is not None:
            n_c = critic.size
            critic_refs = critic.submit("update", list(zip(rollout.split(n_c), torch.tensor_split(values, n_c),
                                                           torch.tensor_split(returns, n_c))), spec=self.critic_spec)
        t3 = time.perf_counter()
        self.iteration += 1

        lengths = rollout.response_lengths.float()
        n_tokens = float(lengths.sum())
        metrics = {
            "ppo/reward": scores.mean().item(),
            "ppo/reward_normalised": normed.mean().item(),
            "ppo/kl": (kl.sum(1)).mean().item(),  # per response, summed over its tokens
            "ppo/kl_per_token": masked_mean(kl, mask).item(),
            "ppo/response_length": lengths.mean().item(),
            "ppo/advantage_std": masked_mean(advantages**2, mask).sqrt().item(),
            # score_s includes any of the previous critic update still running; train_s is the policy's
            "time/generate_s": t1 - t0, "time/score_s": t2 - t1, "time/train_s": t3 - t2,
            "time/iteration_s": t3 - t0,
            "time/tokens_per_s": n_tokens / max(t3 - t0, 1e-9),
            "time/generated_tokens_per_s": n_tokens / max(t1 - t0, 1e-9),
        }
        if batch.world is not None:
            metrics["ppo/gold"] = sum(self.ctx.world.judge(p, t) for p, t in zip(batch.world, texts)) / len(texts)
            if batch.tools is not None:  # the share of tool requests whose rollout called the task's tool
                calls = [called(p.task, t) for p, t, on in zip(batch.world, texts, batch.tools) if on]
                metrics["ppo/tool_calls"] = sum(calls) / len(calls)
        metrics["ppo/iteration"] = self.iteration
        return PendingIteration(metrics | engine_stats | rank_mean(policy_stats, "tokens"), critic_refs)

    def finish(self, pending: PendingIteration) -> dict[str, float]:
        """Wait for ``pending``'s critic update; the iteration's metrics, the critic's included."""
        if self.roles.critic is None:
            return pending.metrics
        return pending.metrics | rank_mean(self.roles.critic.wait(pending.critic_refs), "tokens")

    def finished(self, pending: PendingIteration) -> dict[str, float]:
        """``finish``, the critic's statistics checked for NaN and infinity; the iteration becomes the
        newest finished one (``last_metrics``, a point of the training ``path``)."""
        metrics = self.finish(pending)
        check_finite(metrics, method_name(self.ctx.cfg), int(metrics["ppo/iteration"]))
        self.last_metrics = metrics
        self.path.append({"step": int(metrics["ppo/iteration"]), "kl": metrics["ppo/kl"], "pm": metrics["ppo/reward"],
                          **({"gold": metrics["ppo/gold"]} if "ppo/gold" in metrics else {})})
        step = int(metrics["ppo/iteration"])
        if self.ckpt_root is not None and step in snapshot_steps(self.a):
            with atomic_dir(self.ckpt_root / SNAPSHOTS / f"iter_{step:06d}") as tmp:
                self.roles.policy.call("save", str(tmp))  # the policy after ``step`` iterations, for the path
        return metrics

    def iterate(self, until: int) -> Iterator[dict[str, float]]:
        """Run iterations up to ``until``, each one's rollout overlapping the previous one's critic
        update, checkpointing every ``checkpoint_every`` (when there is a ``ckpt_root``); yields each
        iteration's metrics (one iteration late) in order. Every statistic is checked for NaN and
        infinity before anything is saved: a checkpoint holds finished, checked iterations only."""
        pending, every = None, self.a.checkpoint_every
        saving = self.ckpt_root is not None and every > 0
        while self.iteration < until:
            launched = self.launch()
            if pending is not None:  # the previous iteration's critic first: a NaN there names the critic
                yield self.finished(pending)
            check_finite(launched.metrics, method_name(self.ctx.cfg), self.iteration)
            pending = launched
            if saving and (self.iteration % every == 0 or self.iteration == until):
                # the critic's update of this iteration must end before it saves anyway: finish it here
                yield self.finished(pending)
                pending = None
                self.save_checkpoint()  # the last one holds its metrics: resuming a finished run returns them
        if pending is not None:
            yield self.finished(pending)

    # --- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Policy and critic engines (weights, optimizer, schedule) and the loop's own state,
        written atomically to ``<ckpt_root>/iter_<n>``; older ones beyond ``keep_checkpoints`` go."""
        assert self.ckpt_root is not None
        final = self.ckpt_root / f"iter_{self.iteration:06d}"
        with atomic_dir(final) as tmp:
            self.roles.policy.call("save_checkpoint", str(tmp / "policy"))
            if self.roles.critic is not None:
                self.roles.critic.call("save_checkpoint", str(tmp / "critic"))
            write_json(tmp / STATE_FILE, {"iteration": self.iteration, "moments": self.moments.state_dict(),
                                          "last_metrics": self.last_metrics, "path": self.path})
        for old in checkpoints(self.ckpt_root)[: -max(1, self.a.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self) -> Path | None:
        """Load the newest checkpoint under ``ckpt_root``, if any; returns its directory."""
        found = checkpoints(self.ckpt_root) if self.ckpt_root else []
        if not found:
            return None
        latest = found[-1]
        state = json.loads((latest / STATE_FILE).read_text())
        self.roles.policy.call("load_checkpoint", str(latest / "policy"))
        if self.roles.critic is not None:
            self.roles.critic.call("load_checkpoint", str(latest / "critic"))
        self.iteration = int(state["iteration"])
        self.sync_engines(asleep=False)  # the engines started from the SFT model, awake
        self.moments.load_state_dict(state["moments"])
        self.last_metrics = state.get("last_metrics", {})
        self.path = [p for p in state.get("path", []) if p["step"] <= self.iteration]
        return latest

    def train(self, until: int) -> dict[str, float]:
        """Run iterations up to ``until`` (``iterate``), logging each. Returns the last one's metrics."""
        tracker, last = self.ctx.tracker, self.last_metrics
        with tqdm(total=until, initial=self.iteration, desc=method_name(self.ctx.cfg), unit="it",
                  dynamic_ncols=True) as bar:
            for last in self.iterate(until):
                tracker.log(last, step=int(last["ppo/iteration"]))
                if self.exporter is not None:
                    self.exporter.export(last)
                bar.update(1)
                bar.set_postfix(reward=f"{last['ppo/reward']:.3f}", kl=f"{last['ppo/kl']:.3f}",
                                **({"gold": f"{last['ppo/gold']:.3f}"} if "ppo/gold" in last else {}))
        return last


SNAPSHOTS = "path"  # the policies saved along training, under the checkpoints and then in the artifact


def snapshot_steps(a: PPOConfig) -> set[int]:
    """The iterations after which the policy is saved for the equal-KL path: ``algo.path_points``
    evenly spaced ones before the last (the trained policy itself is the path's last point)."""
    k = min(a.path_points, a.iterations - 1)
    return {round(i * a.iterations / (k + 1)) for i in range(1, k + 1)} if k > 0 else set()


def snapshots(root: Path) -> list[tuple[int, Path]]:
    """``(iteration, directory)`` of the policies saved along training under ``root``, in order."""
    found = sorted((root / SNAPSHOTS).glob("iter_*")) if (root / SNAPSHOTS).is_dir() else []
    return [(int(p.name.removeprefix("iter_")), p) for p in found]


def checkpoints(root: Path | None) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.glob("iter_*") if (p / STATE_FILE).is_file())


def ppo_key(ctx: RunContext, sft: Artifact, pm: Artifact) -> tuple[str, dict[str, Any]]:
    cfg = ctx.cfg
    algo = as_key(cfg.algo)
    if not cfg.algo.ptx_coef:  # (ptx_coef itself is if_set) the SFT batch of PPO-ptx means nothing without it
        del algo["ptx_batch_size"]
    payload = {"algo": algo, "data": as_key(cfg.data), "strategy": as_key(cfg.strategy),
               "pm_max_length": cfg.pm.max_length, "drop_last_layer": cfg.pm.drop_last_layer, "seed": cfg.seed,
               "sft": str(sft.path), "pm": str(pm.path)}
    if as_key(cfg.tools):  # rollouts with tools differ (and keys without them stay as they were)
        payload["tools"] = as_key(cfg.tools)
    if rollout_key(cfg):  # so do those of another engine
        payload["rollout"] = rollout_key(cfg)
    return ctx.cache_key(method_name(cfg), payload), payload


def ppo_stage(ctx: RunContext, sft: Artifact, pm: Artifact) -> Artifact:
    """The RL policy for this config (PPO, or GRPO / RLOO, named by ``method_name``): from the cache,
    or trained now, continuing an interrupted run of the same config unless ``resume=false``."""
    cfg = ctx.cfg
    check(cfg.algo, cfg.ray)
    key, payload = ppo_key(ctx, sft, pm)
    method = method_name(cfg)
    label = method.upper()

    def build() -> Artifact:
        ckpt_root = ctx.cache.root / f"{method}-checkpoints" / key
        if (not cfg.resume or not cfg.use_cache) and ckpt_root.exists():
            shutil.rmtree(ckpt_root)  # a run asked to start afresh inherits no interrupted one's checkpoints
        tokenizer = load_tokenizer(str(sft.path))
        info: dict[str, Any] = {"restarts": [], "train_seconds": 0.0}
        while True:  # once, or again after an actor's death (at most ray.max_restarts times)
            roles, trainer = None, None
            try:
                roles = start_roles(ctx, sft.path, pm.path)
                trainer = PPOTrainer(ctx, roles, tokenizer, ckpt_root, RayMetrics(ctx.run_tag))
                if cfg.resume or info["restarts"]:
                    restored = trainer.restore()
                    print(f"{label}: resuming from {restored} (iteration {trainer.iteration})" if restored else
                          f"{label}: no checkpoint under {ckpt_root} yet; starting at iteration 0", flush=True)
                    info.setdefault("resumed_from", trainer.iteration)
                started = time.time()
                try:
                    info["final"] = trainer.train(cfg.algo.iterations)
                finally:
                    info["train_seconds"] += time.time() - started
                info["path"] = trainer.path
                if not info["final"]:
                    raise RuntimeError(f"{label}: no metrics for the last iteration: {trainer.ckpt_root} holds a "
                                       "checkpoint of a finished run written before last_metrics were kept; "
                                       "delete it and rerun")
                with ctx.cache.put(method, key, payload) as tmp:  # the policy, its path's snapshots, info
                    roles.policy.call("save", str(tmp))
                    for step, snap in snapshots(ckpt_root):
                        if step in snapshot_steps(cfg.algo):
                            shutil.copytree(snap, tmp / SNAPSHOTS / snap.name)
                    write_json(tmp / INFO_FILE, info)
                print(f"{label}: policy written to {ctx.cache.path(method, key)}", flush=True)
                shutil.rmtree(ckpt_root, ignore_errors=True)  # committed: a later run of it starts afresh
                return Artifact(ctx.cache.path(method, key), False, info)
            except ACTOR_LOST as err:
                if len(info["restarts"]) >= cfg.ray.max_restarts:
                    raise
                at = trainer.iteration if trainer is not None else None
                cause = {"iteration": at, "error": f"{type(err).__name__}: "
                         + (str(err).strip().splitlines() or [""])[0][:300]}
                info["restarts"].append(cause)
                print(f"{label}: an actor was lost at iteration {at} ({cause['error']}); restart "
                      f"{len(info['restarts'])} of at most {cfg.ray.max_restarts}: new actors for every role, "
                      "from the last checkpoint", flush=True)
                ctx.tracker.log({f"{method}/restarts": float(len(info["restarts"]))})
            finally:
                if roles is not None:
                    roles.shutdown()

    return ctx.stage(method, key, "policy", build)


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=ppo`` (or grpo, rloo): the chain, then the method vs SFT (and vs PAT when a PAT
    model is cached). Results are named after the method (``win_rate.gold.grpo_vs_sft``)."""
    cfg = ctx.cfg
    m = method_name(cfg)
    sft = sft_stage(ctx)
    pm = pm_stage(ctx, sft)
    trained = ppo_stage(ctx, sft, pm)

    prompts = ctx.test_prompts
    others = {}
    pat_path = ctx.cache.get("pat", pat_key(ctx, sft, pm)[0])
    if pat_path is not None:
        print(f"{m.upper()}: a PAT model of the same SFT and preference model is cached ({pat_path}); "
              f"adding {m.upper()} vs PAT")
        others["pat"] = (pat_path, Job(prompts, cfg.pat.inference_tag))
    v = versus_sft(ctx, m, trained, sft, pm, {m: Job(prompts)}, others=others)
    with ctx.costs.span("eval"):
        path = training_path(ctx, m, snapshots(trained.path), sft.path, pm.path)
    final = trained.info["final"]
    restarts = trained.info.get("restarts", [])
    results = method_run_results(
        ctx, v, m, trained, sft, pm, {"val_accuracy": pm.info["eval"]["val_accuracy"]},
        # the final KL measured alike joins it (versus_sft); the training loop's own estimate apart
        {"kl": {"training_final": {m: final["ppo/kl"]}, "training_final_per_token": {m: final["ppo/kl_per_token"]}},
         m: {"iterations": cfg.algo.iterations, "final": final, "train_seconds": trained.info.get("train_seconds")},
         "restarts": len(restarts), **({"restart_causes": restarts} if restarts else {})},
        frontier={f"{m}_path": path, f"{m}_training": trained.info.get("path", [])},
        artifacts={"pat": str(pat_path)} if pat_path else None)
    return publish(ctx, results, method_metrics(results) | {f"kl/final_{m}": results["kl"]["final"][m]},
                   lambda r: print_summary(r, m))


def print_summary(results: dict[str, Any], method: str = "ppo") -> None:
    print(f"\n{method.upper()} on held-out test prompts")
    print_win_rates(results)
    if "gold" in results:
        print("  mean gold: " + ", ".join(f"{k.upper()} {v:.3f}" for k, v in results["gold"].items()))
    print(f"  KL to the SFT model: {results['kl']['final'][method]:.3f} nats per reply (temperature-1 samples of the "
          f"control prompts; the last iteration's rollouts: {results['kl']['training_final'][method]:.3f})")
    print_at_kl(results.get("at_kl", {}))
