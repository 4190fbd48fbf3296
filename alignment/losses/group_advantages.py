"""Critic-free advantages from groups of responses to the same prompt.

Rows come in groups of ``group_size`` consecutive responses to one prompt; each response's
advantage is one number, put on every one of its tokens, from its sequence reward ``r``
(``AdvantageInputs.scores``):

* ``grpo`` (Shao et al., 2024, DeepSeekMath, outcome supervision):
  ``A = (r - mean_group(r)) / (std_group(r) + eps)``, the standard deviation Bessel-corrected.
* ``rloo`` (Ahmadian et al., 2024, REINFORCE leave-one-out):
  ``A = r - mean of the other k - 1 rewards of the group`` ( = ``k / (k - 1) * (r - mean_group(r))``).
  RLOO puts the KL penalty in the reward, so there ``r`` is the score minus ``beta`` times the
  summed per-token KL (``algo.kl_in=reward``).

Neither needs values, and neither returns returns (None).
"""

from __future__ import annotations

import torch

from alignment.losses.gae import AdvantageInputs
from alignment.losses.registry import ADVANTAGE_ESTIMATORS

GRPO_EPS = 1e-4


def grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]`` -> ``[B / group_size, group_size]``, checking the groups are whole and of at least 2."""
    if group_size < 2:
        raise ValueError(f"group advantages need group_size >= 2, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} responses do not split into groups of {group_size}")
    return scores.float().reshape(-1, group_size)


def on_tokens(per_response: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per response ``[B]`` on each of its response tokens ``[B, R]``."""
    mask = mask.to(per_response.dtype)
    return per_response[:, None] * mask


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """Group-normalised outcome reward on every response token."""
    r = grouped(inputs.scores, inputs.group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + GRPO_EPS)
    return on_tokens(adv.reshape(-1), inputs.mask), None


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """Reward minus the mean reward of the group's other responses, on every response token."""
    r = grouped(inputs.scores, inputs.group_size)
    k = inputs.group_size
    baseline = (r.sum(1, keepdim=True) - r) / (k - 1)
    return on_tokens((r - baseline).reshape(-1), inputs.mask), None
