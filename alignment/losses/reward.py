"""The RLHF reward: the preference-model score at the last response token minus a per-token
KL penalty to the reference (MOSS §7.2, beta = 0.02), with optional running normalisation and
clipping of the score."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class RunningMoments:
    """Mean and standard deviation of every score seen so far (parallel-variance merge)."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        b_mean, b_var = x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def normalise_scores(scores: torch.Tensor, moments: RunningMoments | None, clip: float | None) -> torch.Tensor:
    """Update ``moments`` with ``scores`` and return them standardised, then clipped to ``±clip``.

    ``moments`` None leaves the scores' scale alone (clipping still applies).
    """
    out = scores.float()
    if moments is not None:
        moments.update(out)
        out = (out - moments.mean) / max(moments.std, 1e-6)
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


def penalise_missing_eos(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """``scores`` less ``penalty`` on the rows whose reply never ended (TRL's ``missing_eos_penalty``:
    a reply cut at the token limit is not scored as if it were complete); ``None`` leaves them."""
    if penalty is None:
        return scores
    return scores - penalty * (~ended.to(torch.bool)).to(scores.dtype)


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards ``[B, R]``: ``-beta * kl`` on every response token, plus the sequence's
    score on its last response token. ``mask`` marks the response tokens (left-aligned; with tools,
    the tokens the program wrote inside a response are outside it)."""
    mask = mask.to(kl.dtype)
    rewards = -beta * kl * mask
    last = mask.size(1) - 1 - mask.flip(1).argmax(1)  # the last marked column
    return rewards.scatter_add(1, last[:, None], scores.to(rewards.dtype)[:, None] * (mask.sum(1, keepdim=True) > 0))
