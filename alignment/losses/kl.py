"""Per-token KL estimators between the policy and the reference (Schulman's k1/k2/k3).

With ``r = log pi_ref(a) - log pi(a)`` for an action sampled from the policy:
k1 = ``-r`` (unbiased, can be negative), k2 = ``r^2 / 2``, k3 = ``exp(r) - 1 - r`` (unbiased and
non-negative).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from the log-probs of the sampled tokens."""
    log_ratio = ref_logprobs.float() - logprobs.float()
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_ESTIMATORS}")
