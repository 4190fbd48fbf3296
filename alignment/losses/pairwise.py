"""The pairwise preference loss of the preference model (MOSS §7.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignment.losses.registry import PREFERENCE_LOSSES


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``-mean(log sigmoid(r_w - r_l))`` and the share of pairs ranked right (``r_w > r_l``)."""
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ")
    margin = chosen.float() - rejected.float()
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()


def preference_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every preference loss reports about its pairs' rewards (detached): the share ranked right
    (``chosen > rejected``), the mean margin, and the mean chosen and rejected reward."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return {"reward_accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean(),
            "chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()}


@PREFERENCE_LOSSES.register("bradley_terry")
def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, beta: float = 1.0,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The preference model's loss, ``-mean(log sigmoid(r_w - r_l))`` on its scores (``beta`` unused)."""
    loss, _ = pairwise_loss(chosen, rejected)
    return loss, preference_stats(chosen, rejected)
