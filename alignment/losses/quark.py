"""Quark's loss (Lu et al., 2022): the tag-conditioned next-token loss, plus a per-token KL penalty
to the reference (SFT) model and, as an option, an entropy bonus.

At every labelled token ``t`` (the reply tokens, as the LM loss counts them) with the policy's
next-token distribution ``p_t = softmax(z_t)`` (given the tagged context) and the reference's
``q_t`` (given the untagged context), the penalty is the exact KL over the vocabulary,
``KL(p_t || q_t) = sum_v p_t(v) (log p_t(v) - log q_t(v))``, averaged over the labelled tokens
where the reference is known. Its gradient in the logits is ``p_t(v) (log p_t(v) - log q_t(v) - KL)``.

    loss = mean_t NLL_t + kl_coef * mean_t KL(p_t || q_t) - entropy_coef * mean_t H(p_t)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alignment.losses.logprobs import entropy
from alignment.losses.masked import masked_mean


def token_kl(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``[N]``: ``KL(softmax(logits) || exp(ref_logprobs))`` at each of ``N`` positions (``[N, V]`` each;
    ``ref_logprobs`` normalised log-probabilities)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (logp.exp() * (logp - ref_logprobs.float())).sum(-1)


def masked_token_kl(logits: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``token_kl`` over the positions where ``mask`` is 1 (0 when none is)."""
    return masked_mean(token_kl(logits, ref_logprobs), mask)


def quark_loss(logits: torch.Tensor, targets: torch.Tensor, ref_logprobs: torch.Tensor, ref_mask: torch.Tensor,
               kl_coef: float, entropy_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Quark's loss at ``N`` labelled positions: ``logits`` ``[N, V]`` (the policy, tagged context),
    ``targets`` ``[N]`` (the tokens to predict), ``ref_logprobs`` ``[N, V]`` (the reference, untagged
    context) and ``ref_mask`` ``[N]`` (1 where the reference is known). Returns the loss and its parts
    (``nll``, ``kl``, ``entropy``, detached)."""
    logits = logits.float()
    nll = F.cross_entropy(logits, targets, reduction="mean") if targets.numel() else logits.sum() * 0.0
    kl = masked_token_kl(logits, ref_logprobs, ref_mask)
    loss = nll + kl_coef * kl
    ent = entropy(logits).mean() if targets.numel() else logits.sum() * 0.0
    if entropy_coef:
        loss = loss - entropy_coef * ent
    return loss, {"nll": nll.detach(), "kl": kl.detach(), "entropy": ent.detach()}
