"""Preference-aware training (MOSS §7.2): bucket preference-model scores and tag replies.

Scores are split into ``n`` buckets, by equal frequency (quantiles, the default) or by fixed
thresholds, and the buckets are relabelled in ascending order as evenly spaced tags in 0..100
(0, 20, 40, 60, 80, 100 for six buckets). The tag goes in front of the reply:
``<|MOSS|>: <quality: 60> ...``; at inference the prompt ends ``<|MOSS|>: <quality: 100>``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from alignment.chat_format import Conversation


def bucket_tags(n_buckets: int) -> list[int]:
    """Evenly spaced tags in 0..100, ascending: 6 buckets give 0, 20, 40, 60, 80, 100."""
    if n_buckets < 2:
        raise ValueError(f"need at least 2 buckets, got {n_buckets}")
    return [round(100 * i / (n_buckets - 1)) for i in range(n_buckets)]


def quantile_edges(scores: Sequence[float], n_buckets: int) -> list[float]:
    """``n_buckets - 1`` inner edges that split ``scores`` into equal-frequency buckets.

    Edge ``k`` is the smallest score of bucket ``k + 1`` in sorted order, so a bucket holds
    the scores ``>= its lower edge``; equal scores always share a bucket.
    """
    if not scores:
        raise ValueError("cannot bucket an empty list of scores")
    ordered = sorted(scores)
    return [ordered[(len(ordered) * k) // n_buckets] for k in range(1, n_buckets)]


def assign_buckets(scores: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Bucket index of each score: the number of edges at or below it."""
    if list(edges) != sorted(edges):
        raise ValueError(f"bucket edges must be ascending, got {list(edges)}")
    return [bisect.bisect_right(edges, s) for s in scores]


def tag_scores(scores: Sequence[float], n_buckets: int = 6, rule: str = "quantile",
               thresholds: Sequence[float] | None = None) -> tuple[list[int], list[float]]:
    """The quality tag of each score, and the edges used (``rule``: quantile or fixed)."""
    if rule == "quantile":
        edges = quantile_edges(scores, n_buckets)
    elif rule == "fixed":
        if thresholds is None or len(thresholds) != n_buckets - 1:
            raise ValueError(f"rule 'fixed' needs {n_buckets - 1} thresholds, got {thresholds}")
        edges = list(thresholds)
    else:
        raise ValueError(f"unknown bucketing rule {rule!r}; choose 'quantile' or 'fixed'")
    tags = bucket_tags(n_buckets)
    return [tags[b] for b in assign_buckets(scores, edges)], edges


def tag_conversation(conv: Conversation, tag: int) -> Conversation:
    """The conversation with its last reply tagged ``<quality: tag>``."""
    return conv.with_last_reply(conv.turns[-1].moss, quality=tag)
