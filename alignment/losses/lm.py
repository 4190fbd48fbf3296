"""The masked next-token loss of supervised fine-tuning."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def masked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor,
                   head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over positions whose label is not -100.

    ``hidden`` is ``[B, T, H]`` (the decoder's final states, aligned with the inputs; the shift
    happens here) and ``head`` maps ``[N, H]`` states to ``[N, V]`` logits: it runs only on the
    positions that carry a label. Returns ``(loss, n_tokens)``.
    """
    targets = labels[:, 1:]
    keep = targets != -100
    logits = head(hidden[:, :-1][keep]).float()
    n_tokens = keep.sum()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss / n_tokens.clamp(min=1), n_tokens
