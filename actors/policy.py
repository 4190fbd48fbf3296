"""The policy actor: holds the trainable causal LM; trains it (SFT, PAT, PPO) and generates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from actors.base import TrainableActor, shares_of, token_shares
from actors.devices import SYNC_TIMEOUT_S, synchronize
from actors.engine import OptimConfig, StrategySpec, TrainingEngine
from actors.sampling import SamplingRole
from alignment.data.batching import collate, shard
from alignment.generation import Generator, HFGenerator, RolloutSpec
from alignment.loss_mask import Encoded
from alignment.losses.dpo import log_ratios, sequence_logps
from alignment.losses.kl import kl_estimate
from alignment.losses.lm import masked_lm_loss
from alignment.losses.logprobs import entropy, token_logprobs
from alignment.losses.masked import masked_mean
from alignment.losses.quark import quark_loss
from alignment.losses.registry import POLICY_LOSSES, PREFERENCE_LOSSES
from alignment.models.causal_lm import (
    ArchSpec,
    LoraSpec,
    added_token_ids,
    apply_lora,
    build_tiny,
    load_causal_lm,
    merged_weights,
    save_merged,
)
from alignment.models.shared_prefix import lm_hidden_states, output_head
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import Rollout, pack, response_logits, response_tokens


@dataclass(frozen=True)
class PolicyUpdateSpec:
    clip: float = 0.2
    epochs: int = 1
    mini_batches: int = 1
    temperature: float = 1.0  # the rollout's; log-probs are taken under softmax(logits / temperature)
    num_threads: int = 0  # torch CPU threads during the update (0: the actor's own)
    ptx_coef: float = 0.0  # weight of the SFT loss on the ``ptx`` examples added to each step's loss
    policy_loss: str = "ppo_clip"  # a name in alignment.losses.registry.POLICY_LOSSES
    kl_coef: float = 0.0  # with reference log-probs: + kl_coef * mean KL(policy || reference) in the loss
    kl_estimator: str = "k1"  # a name in alignment.losses.registry.KL_ESTIMATORS


@dataclass(frozen=True)
class QuarkSpec:
    kl_coef: float = 0.05  # weight of the per-token KL(policy || reference) over the vocabulary
    entropy_coef: float = 0.0  # weight of the entropy bonus (subtracted from the loss)


@dataclass(frozen=True)
class QuarkExample:
    """One tagged example for ``quark_step``, with the reference's next-token log-distributions at
    its labelled tokens (``[n, V]``, from the untagged conversation) and where they are known (``[n]``)."""

    example: Encoded
    ref_logprobs: torch.Tensor
    ref_mask: torch.Tensor


@dataclass(frozen=True)
class DPOSpec:
    loss: str = "dpo"  # a name in alignment.losses.registry.PREFERENCE_LOSSES
    beta: float = 0.1


@dataclass(frozen=True)
class DPOPair:
    """One labelled pair for ``dpo_step``: each reply as (prompt ids, reply ids), and its summed
    log-prob under the reference model (computed once, before training)."""

    chosen: tuple[list[int], ...]  # (prompt ids, reply ids[, the reply's mask])
    rejected: tuple[list[int], ...]
    ref_chosen: float
    ref_rejected: float


@dataclass
class ModelSpec:
    """What to build: the tiny model (``path`` None) or a local checkpoint, and its tokenizer."""

    tokenizer_path: str
    path: str | None = None
    arch: ArchSpec = field(default_factory=ArchSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    seed: int = 0


class PolicyActor(TrainableActor, SamplingRole):
    def init_model(self, spec: ModelSpec, strategy: StrategySpec, optim: OptimConfig | None) -> int:
        """Build the model and its engine; returns the number of trainable parameters."""
        self.tokenizer = load_tokenizer(spec.tokenizer_path)
        if spec.path is None:
            model = build_tiny(spec.arch, self.tokenizer, seed=spec.seed)
        else:
            model = load_causal_lm(spec.path, self.tokenizer)
        new_rows = added_token_ids(self.tokenizer, spec.path) if spec.path is not None else ()
        model = apply_lora(model, spec.lora, new_rows)
        torch.manual_seed(spec.seed + self.rank)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.engine = TrainingEngine(model, optim, strategy, self.device)  # frozen without ``optim``: it only samples
        return n_params

    def lm_loss(self, examples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked next-token loss of ``examples`` (mean over their labelled tokens) and the token count."""
        batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        hidden = lm_hidden_states(self.engine, batch["input_ids"], batch["attention_mask"])
        return masked_lm_loss(hidden, batch["labels"], output_head(self.engine))

    def sft_step(self, examples: list[Encoded]) -> dict[str, float]:
        """One optimizer step of masked next-token loss on this rank's share of the batch (in
        micro-batches of ``micro_batch_size`` examples, each weighted by its share of the labelled tokens)."""
        parts = shard(examples, self.micro_batches(len(examples)))
        tokens = [sum(sum(e.loss_mask[1:]) for e in part) for part in parts]  # the targets masked_lm_loss counts
        total, shares = sum(tokens), shares_of(tokens)

        def loss_fn(part: list[Encoded]) -> tuple[torch.Tensor, dict[str, Any]]:
            loss, _ = self.lm_loss(part)
            return loss, {"loss": loss.detach()}

        stats = self.accumulate(list(zip(parts, shares)), loss_fn)
        return {"loss": stats["loss"], "tokens": float(total), **self.engine.step()}

    def quark_step(self, items: list[QuarkExample], spec: QuarkSpec) -> dict[str, float]:
        """One optimizer step of Quark's loss (``alignment.losses.quark.quark_loss``: the tag-conditioned
        next-token loss plus ``spec.kl_coef`` times the per-token KL to the reference, minus
        ``spec.entropy_coef`` times the entropy) on this rank's share, in micro-batches weighted by their
        share of the labelled tokens, as ``sft_step``."""
        parts = shard(items, self.micro_batches(len(items)))
        tokens = [sum(sum(q.example.loss_mask[1:]) for q in part) for part in parts]
        total, shares = sum(tokens), shares_of(tokens)

        def loss_fn(part: list[QuarkExample]) -> tuple[torch.Tensor, dict[str, Any]]:
            batch = {k: v.to(self.device) for k, v in
                     collate([q.example for q in part], self.tokenizer.pad_token_id).items()}
            hidden = lm_hidden_states(self.engine, batch["input_ids"], batch["attention_mask"])
            targets = batch["labels"][:, 1:]
            keep = targets != -100
            logits = output_head(self.engine)(hidden[:, :-1][keep])
            ref = torch.cat([q.ref_logprobs for q in part]).to(self.device)
            mask = torch.cat([q.ref_mask for q in part]).to(self.device)
            if ref.size(0) != logits.size(0):
                raise ValueError(f"quark_step: {ref.size(0)} reference rows for {logits.size(0)} labelled tokens")
            loss, st = quark_loss(logits, targets[keep], ref, mask, spec.kl_coef, spec.entropy_coef)
            return loss, {"loss": loss.detach(), **st}

        stats = self.accumulate(list(zip(parts, shares)), loss_fn)
        return {**stats, "tokens": float(total), **self.engine.step()}

    def sequence_logprobs(self, rows: list[tuple[list[int], ...]]) -> torch.Tensor:
        """``[B]`` summed log-probs of each row's reply tokens given its prompt (with autograd); a row
        ``(prompt, reply, mask)`` sums over the reply tokens its mask marks."""
        masks = [row[2] if len(row) > 2 else [1] * len(row[1]) for row in rows]
        ro = pack([row[0] for row in rows], [row[1] for row in rows], [[0.0] * len(row[1]) for row in rows],
                  self.tokenizer.pad_token_id, masks).to(self.device)
        return sequence_logps(token_logprobs(response_logits(self.engine, ro), response_tokens(ro)), ro.response_mask)

    def dpo_step(self, pairs: list[DPOPair], spec: DPOSpec) -> dict[str, float]:
        """One optimizer step of the preference loss ``spec.loss`` on this rank's share of the pairs:
        the replies of all its pairs in one pass (a reply in several pairs, as the candidates of one
        comparison group are, once), their log-ratios to the reference as the loss's inputs. In
        micro-batches of ``micro_batch_size`` pairs, each weighted by its share of the pairs."""
        parts = shard(pairs, self.micro_batches(len(pairs)))
        sequences: list[int] = []

        def loss_fn(part: list[DPOPair]) -> tuple[torch.Tensor, dict[str, Any]]:
            loss, st, n_rows = self._dpo_loss(part, spec)
            sequences.append(n_rows)
            return loss, st

        stats = self.accumulate([(p, len(p) / len(pairs)) for p in parts], loss_fn)
        return {**stats, "pairs": float(len(pairs)), "sequences": float(sum(sequences)), **self.engine.step()}

    def _dpo_loss(self, pairs: list[DPOPair], spec: DPOSpec) -> tuple[torch.Tensor, dict[str, Any], int]:
        """The preference loss of ``pairs`` (a mean over them), its stats and the replies it scored."""
        n = len(pairs)
        rows, where = [], {}
        for row in [p.chosen for p in pairs] + [p.rejected for p in pairs]:
            where.setdefault((tuple(row[0]), tuple(row[1])), len(where))
            if len(where) > len(rows):
                rows.append(row)
        index = [where[(tuple(r[0]), tuple(r[1]))] for r in [q.chosen for q in pairs] + [q.rejected for q in pairs]]
        logps = self.sequence_logprobs(rows)[torch.tensor(index, device=self.device)]
        chosen, rejected = logps[:n], logps[n:]
        ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in pairs], device=self.device)
        loss, st = PREFERENCE_LOSSES.get(spec.loss)(*log_ratios(chosen, rejected, ref[:, 0], ref[:, 1]), spec.beta)
        return loss, {"loss": loss.detach(), **st, "chosen_logps": chosen.detach().mean(),
                      "rejected_logps": rejected.detach().mean()}, len(rows)

    def generator(self) -> Generator:
        # ZeRO-3 ranks generate in step; a bf16 policy recomputes the old log-probs (``rollout``), so
        # sampling keeps no per-step logits for them
        return HFGenerator(self.engine.module, self.tokenizer, synced_gpus=self.engine.lockstep,
                           logprobs=not self.engine.spec.bf16)

    def sampling_context(self) -> contextlib.AbstractContextManager:
        return self.engine.precision()  # the numerics the engine trains with

    def rollout(self, prompts: list[list[int]], spec: RolloutSpec, seed: int,
                tools: list[frozenset[str] | None] | None = None, max_calls: int = 8,
                quality: int | None = None) -> tuple[Rollout, list[str]]:
        """Sample a response to each prompt (token ids; ``SamplingRole.sample``); returns the rollout
        and the reply texts. What tools wrote is in the sequences but outside the response mask."""
        responses, logprobs, masks, texts = self.sample(prompts, spec, seed, tools, max_calls, quality)
        rollout = pack(prompts, responses, logprobs, self.tokenizer.pad_token_id, masks)
        if self.engine.spec.bf16:
            # in bf16, sampling (one token at a time, KV cache) and the update's forward pass round
            # differently: take the old log-probs from the engine's own forward pass, as OpenRLHF and
            # verl do, so the first ratio of an update is 1 and the KL to an identical reference 0
            rollout = replace(rollout, logprobs=self.old_logprobs(rollout, spec.temperature))
        return rollout, texts

    def score_rollout(self, prompts: list[list[int]], responses: list[list[int]], masks: list[list[int]] | None,
                      sampled: list[list[float]], temperature: float) -> tuple[Rollout, tuple[float, int]]:
        """The rollout of responses another engine sampled (vLLM): the old log-probs are this
        engine's forward pass on the sampled tokens (the numerics of the update's, which applies the
        engine's precision itself), so the ratio and KL compare the trainer's numbers with the
        trainer's, whatever the sampler's kernels computed. Also the sum of |sampler − trainer|
        log-prob over the sampled tokens, and their count."""
        rollout = pack(prompts, responses, sampled, self.tokenizer.pad_token_id, masks)
        ours = self.old_logprobs(rollout, temperature)
        on = rollout.response_mask > 0
        gap = ((rollout.logprobs - ours).abs() * on).sum().item()
        return replace(rollout, logprobs=ours), (gap, int(on.sum()))

    def _weights(self, only_lora: bool) -> Iterator[tuple[str, torch.Tensor]]:
        """``merged_weights`` of the engine's module (call inside ``self.engine.gathered()``, ZeRO-3)."""
        return merged_weights(self.engine.module, only_adapted=only_lora)

    @torch.no_grad()
    def named_weights(self, only_lora: bool = False, dtype: str | None = None) -> list[tuple[str, torch.Tensor]]:
        """``_weights`` copied to the CPU in the engines' ``dtype`` (rank 0's; other ranks return none),
        for Ray's object store. Collective under ZeRO-3: every rank calls it."""
        with self.engine.gathered():
            if self.rank != 0:
                return []
            return [(n, _cast(t, dtype).to("cpu", copy=True)) for n, t in self._weights(only_lora)]

    def init_broadcast(self, host: str, port: int, world_size: int) -> None:
        """GPU, rank 0: host the NCCL group of the weight broadcast to the rollout engines."""
        from alignment.vllm_generation import broadcast_group

        if self.rank == 0:  # an indexed device: the communicator compares each tensor's device with it
            self._broadcast = broadcast_group(host, port, 0, world_size,
                                              torch.device("cuda", torch.cuda.current_device()))

    @torch.no_grad()
    def weight_metas(self, only_lora: bool = False, dtype: str | None = None) -> list[tuple[str, str, tuple[int, ...]]]:
        """Name, dtype and shape of each tensor ``broadcast_weights`` sends, in order (rank 0's;
        collective under ZeRO-3)."""
        with self.engine.gathered():
            return [(n, str(_cast(t, dtype).dtype).removeprefix("torch."), tuple(t.shape))
                    for n, t in self._weights(only_lora)]

    @torch.no_grad()
    def broadcast_weights(self, only_lora: bool = False, dtype: str | None = None,
                          timeout_s: float = SYNC_TIMEOUT_S) -> None:
        """GPU: rank 0 broadcasts ``_weights`` in the engines' ``dtype`` (collective under ZeRO-3), and
        raises ``TimeoutError`` when the broadcast is not done in ``timeout_s`` (an engine that failed
        while receiving)."""
        with self.engine.gathered():
            if self.rank == 0:
                for _, t in self._weights(only_lora):
                    self._broadcast.broadcast(_cast(t, dtype).contiguous(), src=0, stream=torch.cuda.current_stream())
                synchronize(timeout_s, "policy rank 0: the weight broadcast to the rollout engines")

    @torch.no_grad()
    def old_logprobs(self, rollout: Rollout, temperature: float) -> torch.Tensor:
        """``[B, R]`` log-probs of the rollout's response tokens by the engine's forward pass (what
        the update computes), zero on padding."""
        ro = rollout.to(self.device)
        logits = response_logits(self.engine, ro)
        return (token_logprobs(logits, response_tokens(ro), temperature) * ro.response_mask).cpu()

    def ppo_update(self, rollout: Rollout, advantages: torch.Tensor, ptx: list[Encoded] | None,
                   spec: PolicyUpdateSpec, ref_logprobs: torch.Tensor | None = None) -> dict[str, float]:
        """Clipped-surrogate updates on this rank's share: ``spec.epochs`` passes of
        ``spec.mini_batches`` optimizer steps. With ``ptx`` examples (PPO-ptx, InstructGPT §3.5) each
        step adds ``spec.ptx_coef`` times their SFT loss, the examples split over the mini-batches as
        the rollout is. With ``ref_logprobs`` (``[B, R]``, the KL in the loss, as GRPO puts it) each
        step adds ``spec.kl_coef`` times the ``spec.kl_estimator`` estimate of KL(policy || reference)
        averaged over response tokens. Returns mean stats and the token count."""
        ro, advantages = rollout.to(self.device), advantages.to(self.device)
        surrogate_fn = POLICY_LOSSES.get(spec.policy_loss)
        refs = (torch.tensor_split(ref_logprobs.to(self.device), spec.mini_batches) if ref_logprobs is not None
                else [None] * spec.mini_batches)
        ptx_parts = shard(ptx, spec.mini_batches) if ptx and spec.ptx_coef else None
        advs = torch.tensor_split(advantages, spec.mini_batches)
        parts = list(zip(ro.split(spec.mini_batches), advs, refs, ptx_parts or [None] * spec.mini_batches))

        def loss_fn(mb: Rollout, adv: torch.Tensor, ref: torch.Tensor | None,
                    ptx_part: list[Encoded] | None) -> tuple[torch.Tensor, dict[str, Any]]:
            if mb is None:  # the PPO-ptx examples of a step cut into micro-batches (``micro``)
                ptx_loss, _ = self.lm_loss(ptx_part)
                return spec.ptx_coef * ptx_loss, {"ptx_loss": ptx_loss.detach()}
            logits = response_logits(self.engine, mb)
            logprobs = token_logprobs(logits, response_tokens(mb), spec.temperature)
            surrogate, st = surrogate_fn(logprobs, mb.logprobs, adv, mb.response_mask, spec.clip)
            loss = surrogate
            if ref is not None:
                on = mb.response_mask > 0  # a tool's tokens (and padding) never enter the estimator
                kl = kl_estimate(torch.where(on, logprobs, 0.0), torch.where(on, ref, 0.0), spec.kl_estimator)
                kl_loss = masked_mean(kl, mb.response_mask)
                st["kl_loss"] = kl_loss.detach()
                loss = loss + spec.kl_coef * kl_loss
            if ptx_part:
                ptx_loss, _ = self.lm_loss(ptx_part)
                st["ptx_loss"] = ptx_loss.detach()
                loss = loss + spec.ptx_coef * ptx_loss
            with torch.no_grad():
                st["entropy"] = masked_mean(entropy(logits.detach(), spec.temperature), mb.response_mask)
            return loss, {"policy_loss": surrogate.detach(), **st}

        threads = torch.get_num_threads()
        if spec.num_threads:  # the other roles wait while the policy updates: it may take their cores
            torch.set_num_threads(spec.num_threads)
        try:
            # each stat is the mean over the steps that made it (a step without PTX examples has no ptx_loss)
            stats = self.minibatch_steps(spec.epochs, parts, loss_fn, self._ppo_micro)
        finally:  # an exception leaves the actor's threads as they were
            torch.set_num_threads(threads)
        return {f"policy/{k}": v for k, v in stats.items()} | {"tokens": ro.response_mask.sum().item()}

    def _ppo_micro(self, part: tuple) -> list[tuple[tuple, float]]:
        """One PPO step's part cut into micro-batches of ``micro_batch_size`` rollout rows, each
        weighted by its share of the response tokens (the surrogate and KL are token means); the
        step's PTX examples, if any, follow as one more pass of their own (weight 1)."""
        mb, adv, ref, ptx_part = part
        k = self.micro_batches(mb.sequences.size(0))
        if k == 1:
            return [(part, 1.0)]
        refs = torch.tensor_split(ref, k) if ref is not None else [None] * k
        rows = [(m, a, r, None) for m, a, r in zip(mb.split(k), torch.tensor_split(adv, k), refs)]
        return (list(zip(rows, token_shares([r[0].response_mask for r in rows])))
                + ([((None, None, None, ptx_part), 1.0)] if ptx_part else []))

    def save(self, path: str) -> None:
        """Write a plain ``save_pretrained`` directory (LoRA merged) with the tokenizer; rank 0 writes."""

        def save_fn(module: Any, out: str) -> None:
            save_merged(module, out)
            self.tokenizer.save_pretrained(out)

        self.engine.save_model(path, save_fn)


def _cast(t: torch.Tensor, dtype: str | None) -> torch.Tensor:
    """``t`` (detached) in the engines' ``dtype`` when it is a float tensor; integer and bool buffers as they are."""
    t = t.detach()
    return t.to(getattr(torch, dtype)) if dtype and t.is_floating_point() else t
