"""A batch of sampled responses, as every PPO role sees it.

Each row is ``prompt + response`` right-padded to a common length ``T`` (positions run
0, 1, ... from the first prompt token, as in SFT and preference-model training). Per-token
quantities (log-probs, values, rewards, advantages) live on the *left-aligned response*
grid ``[B, R]``: column ``j`` is response token ``j`` of the row, ``response_mask`` marks the
real ones. ``response_index`` maps that grid to the positions of the model's outputs that
predict those tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from alignment.generation import Generator, RolloutSpec
from alignment.models.shared_prefix import lm_hidden_states, output_head
from alignment.models.tokenizer import special_ids
from alignment.template_format import reply_stops


@dataclass
class Rollout:
    sequences: torch.Tensor  # [B, T] long, right-padded prompt + response
    attention_mask: torch.Tensor  # [B, T] long
    prompt_lens: torch.Tensor  # [B] long
    response_mask: torch.Tensor  # [B, R] float, 1 on response tokens the policy sampled (0: padding, tool output)
    logprobs: torch.Tensor  # [B, R] float, the sampling policy's log-probs of the response tokens

    @property
    def size(self) -> int:
        return self.sequences.size(0)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1).long()

    def response_index(self) -> torch.Tensor:
        """``[B, R]`` positions ``t`` whose output (logits, value) is read for response token ``j``:
        ``t = prompt_len - 1 + j``, the last position before the token (clamped on padding)."""
        steps = torch.arange(self.response_mask.size(1), device=self.prompt_lens.device)
        return (self.prompt_lens[:, None] - 1 + steps).clamp(max=self.sequences.size(1) - 1)

    def token_lists(self) -> list[list[int]]:
        """Each row's prompt + response ids without padding (what the preference model scores)."""
        lengths = self.attention_mask.sum(1).tolist()
        return [row[:n] for row, n in zip(self.sequences.tolist(), lengths)]

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def split(self, n: int) -> list[Rollout]:
        """``n`` contiguous, near-equal parts (the same cut as ``torch.tensor_split``)."""
        parts = {f.name: torch.tensor_split(getattr(self, f.name), n) for f in fields(self)}
        return [Rollout(**{k: v[i] for k, v in parts.items()}) for i in range(n)]

    @staticmethod
    def cat(parts: Sequence[Rollout], pad_id: int) -> Rollout:
        """Join rollouts (e.g. from several ranks), re-padding to the longest ``T`` and ``R``."""
        t = max(p.sequences.size(1) for p in parts)
        r = max(p.response_mask.size(1) for p in parts)
        return Rollout(
            sequences=torch.cat([pad_to(p.sequences, t, pad_id) for p in parts]),
            attention_mask=torch.cat([pad_to(p.attention_mask, t, 0) for p in parts]),
            prompt_lens=torch.cat([p.prompt_lens for p in parts]),
            response_mask=torch.cat([pad_to(p.response_mask, r, 0) for p in parts]),
            logprobs=torch.cat([pad_to(p.logprobs, r, 0) for p in parts]),
        )


def pad_to(x: torch.Tensor, length: int, value: float) -> torch.Tensor:
    """Right-pad the last dimension of ``x`` to ``length``."""
    return F.pad(x, (0, length - x.size(-1)), value=value)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
         logprobs: Sequence[Sequence[float]], pad_id: int, masks: Sequence[Sequence[int]] | None = None) -> Rollout:
    """Build a ``Rollout`` from per-row prompt ids, response ids and the responses' log-probs;
    ``masks`` (default: all ones) marks the response tokens the policy sampled, 0 on those a tool
    wrote (they stay in the sequence as context)."""
    if not (len(prompts) == len(responses) == len(logprobs)):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses, {len(logprobs)} log-prob rows")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    b = len(prompts)
    t = max(len(p) + len(r) for p, r in zip(prompts, responses))
    r_max = max(1, max(len(r) for r in responses))
    seqs = torch.full((b, t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    mask = torch.zeros((b, r_max))
    lp = torch.zeros((b, r_max))
    for i, (p, r, lps) in enumerate(zip(prompts, responses, logprobs)):
        if len(lps) != len(r):
            raise ValueError(f"row {i}: {len(r)} response tokens but {len(lps)} log-probs")
        n = len(p) + len(r)
        seqs[i, :n] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attn[i, :n] = 1
        if masks is not None and len(masks[i]) != len(r):
            raise ValueError(f"row {i}: {len(r)} response tokens but a mask of {len(masks[i])}")
        mask[i, : len(r)] = 1 if masks is None else torch.tensor(list(masks[i]), dtype=torch.float)
        lp[i, : len(r)] = torch.tensor(list(lps), dtype=torch.float)
    return Rollout(seqs, attn, torch.tensor([len(p) for p in prompts]), mask, lp)


def end_at_first_stop(responses: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]],
                      stop_ids: Sequence[int]) -> tuple[list[list[int]], list[list[float]]]:
    """Each response up to and including its first id in ``stop_ids`` (the end-of-turn token or any
    other special token), with its log-probs: what comes after was never part of the reply that is
    scored, so it gets no token of the rollout and no advantage."""
    stops = set(stop_ids)
    out_ids, out_lps = [], []
    for ids, lps in zip(responses, logprobs):
        n = next((j + 1 for j, t in enumerate(ids) if t in stops), len(ids))
        out_ids.append(list(ids[:n]))
        out_lps.append(list(lps[:n]))
    return out_ids, out_lps


def first_stop_text(tokenizer: Any, ids: Sequence[int], stops: Sequence[str]) -> int:
    """How many of ``ids`` it takes for their text to hold one of ``stops`` (``len(ids)`` when it
    never does): a reply can spell a special token's text out of ordinary sub-tokens (``<``, ``eo``,
    ``m>``), and its text then ends there (``alignment.template_format.reply_of``) though no stop id
    was sampled. A prefix's text holds a stop whenever a shorter one does, so the count is found by
    bisection: O(log n) decodes of at most n tokens."""
    stops = [s for s in stops if s]

    def holds(k: int) -> bool:
        text = tokenizer.decode(list(ids[:k]), skip_special_tokens=False)
        return any(s in text for s in stops)

    if not ids or not holds(len(ids)) or not holds(len(ids) - 1):  # no stop, or only the last token's (a stop id)
        return len(ids)
    lo, hi = 1, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def end_at_stop_text(tokenizer: Any, responses: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]],
                     ) -> tuple[list[list[int]], list[list[float]]]:
    """Each response up to and including the token that completes its first stop text
    (:func:`first_stop_text` over ``alignment.template_format.reply_stops``): the ids end where the
    reply's text ends, so no token the preference model never saw gets an advantage. A reply cut at a
    stop spelled out in ordinary tokens does not end with the end-of-turn id, so :func:`ended` counts
    it as not ended (``algo.missing_eos_penalty`` applies), as it does a reply cut at a stray special id."""
    stops = reply_stops(tokenizer)
    cut = [first_stop_text(tokenizer, ids, stops) for ids in responses]
    return [list(r[:n]) for r, n in zip(responses, cut)], [list(lp[:n]) for lp, n in zip(logprobs, cut)]


def reply_stop_ids(tokenizer: Any, spec: RolloutSpec) -> list[int]:
    """Where a sampled reply ends: at its first special token (``<eom>``, or a stray ``<eoh>``, role
    prefix...: :func:`~alignment.models.tokenizer.special_ids`); with ``spec.ignore_eos`` (fixed
    lengths, for benchmarks) only ``<eom>`` is named, and the engine ignores it."""
    return [tokenizer.eos_token_id] if spec.ignore_eos else special_ids(tokenizer)


def sample_to_first_special(gen: Generator, tokenizer: Any, prompts: Sequence[Sequence[int]], spec: RolloutSpec,
                            seed: int | None) -> tuple[list[list[int]], list[list[float]]]:
    """Each prompt's response ids and log-probs on ``gen``, up to and including its first special
    token (:func:`reply_stop_ids`), whatever the engine sampled past it (:func:`end_at_first_stop`),
    or at the first special token's text spelled out in ordinary tokens (:func:`end_at_stop_text`):
    the rule of every rollout, a plain reply or a pass of a reply through the tools. The reply the
    preference model scores ends there too (``alignment.template_format.reply_of``), so no token
    after it gets an advantage. ``seed=None`` goes on with torch's current state."""
    stops = reply_stop_ids(tokenizer, spec)
    responses, logprobs = gen.sample(prompts, spec, stops, seed)
    if spec.ignore_eos:
        return responses, logprobs
    return end_at_stop_text(tokenizer, *end_at_first_stop(responses, logprobs, stops))


def ended(rollout: Rollout, eos_id: int) -> torch.Tensor:
    """``[B]`` bool: whether each row's response ends with ``eos_id`` (False for a reply cut at the
    token limit or at another special token, and for an empty one)."""
    lengths = rollout.attention_mask.sum(1)
    last = rollout.sequences.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    return (last == eos_id) & (lengths > rollout.prompt_lens)


def at_responses(outputs: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """Per-position model outputs ``[B, T]`` or ``[B, T, D]`` (values, hidden states, logits) ->
    ``[B, R]`` or ``[B, R, D]``: the outputs at the position that predicts each response token
    (for values: the state before it)."""
    idx = rollout.response_index()
    if outputs.dim() == 2:
        return outputs.gather(1, idx)
    return outputs.gather(1, idx[:, :, None].expand(-1, -1, outputs.size(-1)))


def response_logits(model, rollout: Rollout) -> torch.Tensor:
    """``[B, R, V]`` logits of a causal LM that predict each response token of ``rollout``: the
    decoder runs over the batch (its shared prefix once), the LM head on response positions only."""
    hidden = lm_hidden_states(model, rollout.sequences, rollout.attention_mask)
    return output_head(model)(at_responses(hidden, rollout))


def response_tokens(rollout: Rollout) -> torch.Tensor:
    """``[B, R]`` response token ids (pad where the mask is 0)."""
    idx = (rollout.response_index() + 1).clamp(max=rollout.sequences.size(1) - 1)
    return rollout.sequences.gather(1, idx)
