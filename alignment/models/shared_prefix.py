"""Forward passes that compute the prefix shared by every row of a batch only once.

SFT and PAT batches are whole conversations, and so are PPO's rollouts (prompt + response): they
all open with the same meta-instruction (on the built-in world, 81 of about 133 tokens of an SFT
conversation). In a causal model the activations over a common prefix do not depend on what
follows it, so the prefix runs once (batch 1), its key/value cache is repeated over the batch,
and only the rest of each row runs against that cache. The outputs equal the plain forward
pass's, and so do the gradients: autograd sums the prefix's gradient over the rows that read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from alignment.lockstep import agreed_all


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Number of leading columns in which every row holds the same real (unpadded) token, kept
    below the shortest row's length so that every row has at least one token after it."""
    if input_ids.size(0) == 0:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    # the first column that differs (the width when none does), capped; one host sync in all
    first_diff = torch.cat([~same, same.new_ones(1)]).to(torch.int8).argmax()
    return max(0, int(torch.minimum(first_diff, attention_mask.sum(1).min() - 1)))


def shared_prefix_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          read: Callable[[Any], torch.Tensor], min_shared: int = 16,
                          lockstep: bool | None = None, **kwargs: Any) -> torch.Tensor:
    """``read(model(...))`` over a right-padded batch, as a ``[B, T, ...]`` tensor.

    When the rows share a prefix of at least ``min_shared`` tokens, the prefix runs once and its
    cache serves every row; otherwise (left padding, short prefixes, one row, or a model that
    returns no cache, e.g. under gradient checkpointing) this is the plain forward pass.
    ``model`` is anything called like a transformers decoder (a DeepSpeed engine, a peft model);
    ``read`` picks the per-position output (``out.logits``, ``out.hidden_states[-1]``, ...) and
    ``kwargs`` go to every call. With ``lockstep`` (default: the ``lockstep`` attribute of ``model``,
    a ``TrainingEngine`` under ZeRO-3 over several ranks) the ranks agree first, so that all take the
    prefix pass or none does (``alignment.lockstep``).
    """
    batch = input_ids.size(0)
    p = common_prefix_length(input_ids, attention_mask) if batch > 1 else 0
    lockstep = getattr(model, "lockstep", False) if lockstep is None else lockstep
    if not agreed_all(p >= max(min_shared, 1), lockstep):
        return read(model(input_ids=input_ids, attention_mask=attention_mask, **kwargs))
    head = model(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], use_cache=True, **kwargs)
    cache = getattr(head, "past_key_values", None)
    if cache is None:
        return read(model(input_ids=input_ids, attention_mask=attention_mask, **kwargs))
    cache.batch_repeat_interleave(batch)
    tail = model(input_ids=input_ids[:, p:], attention_mask=attention_mask, past_key_values=cache, use_cache=False,
                 **kwargs)
    first = read(head)
    return torch.cat([first.expand(batch, *first.shape[1:]), read(tail)], dim=1)


def lm_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     min_shared: int = 16) -> torch.Tensor:
    """Final (normed) hidden states ``[B, T, H]`` of a causal LM, its LM head skipped, the shared
    prefix run once. Apply ``output_head(model)`` to the positions whose logits are needed: a
    loss or a log-prob needs them at a third of the positions or fewer (replies, not prompts), and
    the head over a whole batch is a ``[B, T, V]`` tensor."""
    # logits_to_keep with no position: transformers slices the hidden states with it before the head
    none = torch.empty(0, dtype=torch.long, device=input_ids.device)
    return shared_prefix_forward(model, input_ids, attention_mask, lambda out: out.hidden_states[-1], min_shared,
                                 output_hidden_states=True, logits_to_keep=none)


def output_head(model) -> torch.nn.Module:
    """The LM head (``get_output_embeddings``) of a causal LM, also through a training engine's
    ``module`` or a peft wrapper."""
    return getattr(model, "module", model).get_output_embeddings()


def last_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       min_shared: int = 16) -> torch.Tensor:
    """Final (normed) hidden states ``[B, T, H]`` of a decoder with any head (a value model's
    backbone reads them), the shared prefix run once."""
    return shared_prefix_forward(model, input_ids, attention_mask, lambda out: out.hidden_states[-1], min_shared,
                                 output_hidden_states=True)
