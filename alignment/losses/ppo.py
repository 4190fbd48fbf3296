"""The PPO objectives: the clipped surrogate for the policy and the clipped value loss for the
critic, with their diagnostics (clip fraction, approximate KL, explained variance)."""

from __future__ import annotations

import torch

from alignment.losses.masked import masked_mean, masked_var
from alignment.losses.registry import POLICY_LOSSES


@POLICY_LOSSES.register("ppo_clip")
def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-min(ratio * A, clip(ratio, 1 ± clip) * A)`` averaged over response tokens.

    Stats: ``clip_frac`` (tokens where the clipped branch is taken) and ``approx_kl``
    (``mean((ratio - 1) - log ratio)``, the k3 estimate of KL(old || new)).
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = masked_mean(-torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped < unclipped).float(), mask),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``0.5 * max((V - R)^2, (clip(V, V_old ± clip) - R)^2)`` over response tokens (unclipped if
    ``clip`` is None)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        loss = 0.5 * masked_mean(unclipped, mask)
        return loss, {"value_clip_frac": torch.zeros(())}
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over response tokens (1 is perfect, <= 0 is no better than a constant)."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)
