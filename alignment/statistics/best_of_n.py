"""Best-of-n sampling maths: pick the reply a scorer likes best among the first n samples, and the
analytic KL divergence of that best-of-n policy from the sampling policy.

For a reply distribution pi and a scorer with no ties, best-of-n is the policy pi_n that draws n
replies from pi and keeps the highest-scoring one; KL(pi_n || pi) = log n - (n - 1) / n nats
(Stiennon et al. 2020; Gao et al. 2022 use it as the x-axis of best-of-n curves). It is exact when
no two samples tie, and an upper bound otherwise (Beirami et al. 2024): a tiny model often repeats
a reply, so read it as the most best-of-n can move away from the base policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def analytic_kl(n: int) -> float:
    """KL(best-of-``n`` || base policy) in nats: ``log n - (n - 1) / n`` (0 at ``n = 1``)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_index(scores: Sequence[float], n: int) -> int:
    """The index of the highest of the first ``n`` ``scores`` (the first of equal ones)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    if len(scores) < n:
        raise ValueError(f"best-of-{n} needs at least {n} scores, got {len(scores)}")
    best = 0
    for i in range(1, n):
        if scores[i] > scores[best]:
            best = i
    return best


def best_of_n(scores: Sequence[float], replies: Sequence[T], n: int) -> T:
    """The reply with the highest score among the first ``n`` (``scores[i]`` scores ``replies[i]``)."""
    if len(scores) != len(replies):
        raise ValueError(f"{len(scores)} scores for {len(replies)} replies")
    return replies[best_index(scores, n)]


def pick_groups(scores: Sequence[float], group: int, n: int) -> list[int]:
    """Best-of-``n`` over consecutive groups of ``group`` samples (prompt ``k`` owns the samples
    ``k * group`` to ``(k + 1) * group - 1``): the flat index of each group's pick, in order."""
    if group < 1 or len(scores) % group:
        raise ValueError(f"{len(scores)} scores do not split into groups of {group}")
    if n > group:
        raise ValueError(f"best-of-{n} from groups of {group} samples")
    return [k + best_index(scores[k:k + group], n) for k in range(0, len(scores), group)]
