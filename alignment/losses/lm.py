"""The masked next-token loss of supervised fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over positions whose label is not -100.

    Returns ``(loss, n_tokens)``. ``logits`` is ``[B, T, V]`` and ``labels`` ``[B, T]``, aligned
    with the inputs (the shift happens here).
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    n_tokens = (shift_labels != -100).sum()
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss / n_tokens.clamp(min=1), n_tokens
