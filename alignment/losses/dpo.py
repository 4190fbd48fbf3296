"""Direct preference optimisation (Rafailov et al., 2023) and IPO (Azar et al., 2023).

Both take each pair's log-ratio ``h = log pi(y|x) - log pi_ref(y|x)`` (summed over the reply's
tokens) for the chosen (``h_w``) and the rejected (``h_l``) reply; the implicit reward of a reply
is ``beta * h``. The policy's log-probs carry the gradient, the reference's are constants.

    dpo: -log sigmoid(beta * (h_w - h_l))
    ipo: ((h_w - h_l) - 1 / (2 beta))^2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignment.losses.pairwise import preference_stats
from alignment.losses.registry import PREFERENCE_LOSSES


def _check(chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> None:
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def log_ratios(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h_w, h_l)``: each reply's summed log-prob under the policy minus under the reference."""
    return (policy_chosen.float() - ref_chosen.detach().float(),
            policy_rejected.float() - ref_rejected.detach().float())


@PREFERENCE_LOSSES.register("dpo")
def dpo(chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sigmoid DPO loss of log-ratios ``chosen`` (``h_w``) and ``rejected`` (``h_l``), mean over pairs,
    with the implicit rewards' stats (``beta * h``)."""
    _check(chosen, rejected, beta)
    loss = -F.logsigmoid(beta * (chosen.float() - rejected.float())).mean()
    return loss, preference_stats(beta * chosen, beta * rejected)


@PREFERENCE_LOSSES.register("ipo")
def ipo(chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO: the squared distance of the log-ratio margin ``h_w - h_l`` from ``1 / (2 beta)``, mean over pairs."""
    _check(chosen, rejected, beta)
    loss = ((chosen.float() - rejected.float()) - 1 / (2 * beta)).pow(2).mean()
    return loss, preference_stats(beta * chosen, beta * rejected)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, R] -> [B]``: each sequence's log-prob, the sum of its masked (reply) tokens' log-probs."""
    return (token_logps.float() * mask).sum(-1)
