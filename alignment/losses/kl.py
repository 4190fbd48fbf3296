"""Per-token KL estimators between the policy and the reference (Schulman's k1/k2/k3).

With ``r = log pi_ref(a) - log pi(a)`` for an action sampled from the policy:
k1 = ``-r`` (unbiased, can be negative), k2 = ``r^2 / 2``, k3 = ``exp(r) - 1 - r`` (unbiased and
non-negative). Each is registered in ``KL_ESTIMATORS`` under its name.
"""

from __future__ import annotations

import torch

from alignment.losses.registry import KL_ESTIMATORS

__all__ = ["KL_ESTIMATORS", "k1", "k2", "k3", "kl_estimate"]


def _log_ratio(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return ref_logprobs.float() - logprobs.float()


@KL_ESTIMATORS.register("k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``log pi - log pi_ref``."""
    return -_log_ratio(logprobs, ref_logprobs)


@KL_ESTIMATORS.register("k2")
def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``(log pi_ref - log pi)^2 / 2``."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``exp(r) - 1 - r`` with ``r = log pi_ref - log pi``."""
    log_ratio = _log_ratio(logprobs, ref_logprobs)
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from the log-probs of the sampled tokens."""
    return KL_ESTIMATORS.get(kind)(logprobs, ref_logprobs)
