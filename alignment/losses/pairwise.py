"""The pairwise preference loss of the preference model (MOSS §7.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``-mean(log sigmoid(r_w - r_l))`` and the share of pairs ranked right (``r_w > r_l``)."""
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ")
    margin = chosen.float() - rejected.float()
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()
