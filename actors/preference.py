"""The preference-model actor: a value-head model trained on pairs (PM stage), then a frozen
reward that scores sequences (PAT tagging, evaluation, PPO)."""

from __future__ import annotations

import torch

from actors.base import ValueModelActor, shares_of
from alignment.data.batching import pad_right, shard
from alignment.generation import eval_mode
from alignment.lockstep import agreed_max
from alignment.losses.pairwise import pairwise_loss
from alignment.models.causal_lm import save_merged
from alignment.models.value_head import sequence_scores


class PreferenceActor(ValueModelActor):
    def _scores(self, seqs: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_right(seqs, self.tokenizer.pad_token_id)
        out = self.engine.forward(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return out.logits.squeeze(-1).float()  # read at the last non-pad token by transformers

    def pm_step(self, groups: list[tuple[list[list[int]], list[tuple[int, int]]]]) -> dict[str, float]:
        """One optimizer step of the pairwise loss over this rank's comparison groups (in micro-batches of
        ``micro_batch_size`` groups, each weighted by its share of the labelled pairs).

        A group is (candidate sequences, [(chosen, rejected) indices]): each candidate is scored
        once and the loss averages over every labelled pair.
        """
        parts = shard(groups, self.micro_batches(len(groups)))
        n_pairs = [sum(len(pairs) for _, pairs in part) for part in parts]
        total = sum(n_pairs)
        stats = self.accumulate(list(zip(parts, shares_of(n_pairs))), self._pm_loss)
        return {**stats, "n": float(total), **self.engine.step()}

    def _pm_loss(self, groups: list[tuple[list[list[int]], list[tuple[int, int]]]]) -> tuple[torch.Tensor, dict]:
        """The pairwise loss (a mean over the groups' labelled pairs) and its accuracy."""
        seqs, chosen, rejected = [], [], []
        for cands, pairs in groups:
            base = len(seqs)
            seqs.extend(cands)
            chosen.extend(base + c for c, _ in pairs)
            rejected.extend(base + r for _, r in pairs)
        scores = self._scores(seqs)
        loss, acc = pairwise_loss(scores[chosen], scores[rejected])
        return loss, {"loss": loss.detach(), "accuracy": acc}

    @torch.inference_mode()  # the scores leave as Python floats
    def score(self, seqs: list[list[int]], batch_size: int = 64) -> list[float]:
        """Scalar reward of each sequence (no gradients). Batches are cut from the sequences in
        order of length, so that little of each is padding; the scores come back in input order.
        Under ZeRO-3 over several ranks every rank runs as many batches as the rank with the most
        (a rank with fewer scores a one-token batch and drops it): each pass gathers weights from all."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = [0.0] * len(seqs)
        lockstep = self.engine.lockstep
        n_batches = agreed_max(-(-len(seqs) // batch_size), lockstep)
        with eval_mode(self.engine.module) as model:  # train/eval mode restored even on an exception
            for b in range(n_batches):
                part = order[b * batch_size:(b + 1) * batch_size]
                rows = [seqs[i] for i in part] or [[self.tokenizer.pad_token_id]]  # no rows left: the filler
                ids, mask = pad_right(rows, self.tokenizer.pad_token_id)
                scores = sequence_scores(model, ids.to(self.device), mask.to(self.device), lockstep).float().tolist()
                for i, s in zip(part, scores):
                    out[i] = s
        return out

    def save(self, path: str) -> None:
        def save_fn(module: torch.nn.Module, out: str) -> None:
            save_merged(module, out)  # LoRA adapters (if any) merged, the trained head in place
            self.tokenizer.save_pretrained(out)

        self.engine.save_model(path, save_fn)
