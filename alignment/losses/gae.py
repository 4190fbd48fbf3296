"""Generalised advantage estimation (Schulman et al., 2016) over left-aligned responses, and the
inputs every registered advantage estimator takes (``AdvantageInputs``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignment.losses.registry import ADVANTAGE_ESTIMATORS


@dataclass
class AdvantageInputs:
    """What an advantage estimator sees of one rollout batch.

    ``rewards``: per-token rewards ``[B, R]`` (the score on the last response token, and ``-beta *
    KL`` on every token when the KL is in the reward). ``values``: the critic's ``[B, R]``, or None
    when no critic runs. ``mask``: ``[B, R]``, 1 on response tokens. ``scores``: ``[B]``, each
    sequence's reward (its score, minus ``beta`` times its summed KL when the KL is in the reward:
    the sum of its token rewards). Rows come in groups of ``group_size`` consecutive responses to
    the same prompt.
    """

    rewards: torch.Tensor
    values: torch.Tensor | None
    mask: torch.Tensor
    scores: torch.Tensor
    group_size: int = 1
    gamma: float = 1.0
    lam: float = 0.95


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``[B, R]``.

    ``values[:, t]`` is the critic's value of the state before response token ``t``; the value
    after the last token is 0 (the episode ends). Positions outside ``mask`` get 0 and are skipped:
    the recursion runs over the marked tokens only, so the tokens a tool wrote inside a response
    (outside the mask) pass the later tokens' advantage on to the earlier ones unchanged.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(running)  # the value of the next marked token's state
    for t in reversed(range(values.size(1))):
        on = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(on, delta + gamma * lam * running, running)
        advantages[:, t] = running * mask[:, t]
        next_value = torch.where(on, values[:, t], next_value)
    return advantages, (advantages + values) * mask


@ADVANTAGE_ESTIMATORS.register("gae")
def gae_estimator(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``gae`` over the token rewards and the critic's values (needs a critic)."""
    if inputs.values is None:
        raise ValueError("the gae advantage estimator needs the critic's values")
    return gae(inputs.rewards, inputs.values, inputs.mask, inputs.gamma, inputs.lam)


gae_estimator.needs_values = True  # type: ignore[attr-defined]


def needs_values(name: str) -> bool:
    """Whether the registered advantage estimator ``name`` needs a critic's values."""
    return bool(getattr(ADVANTAGE_ESTIMATORS.get(name), "needs_values", False))
