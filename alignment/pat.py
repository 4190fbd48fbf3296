"""Preference-aware training (MOSS §7.2): bucket preference-model scores and tag replies.

Scores are split into ``n`` buckets, by equal frequency (quantiles, the default) or by fixed
thresholds, and the buckets are relabelled in ascending order as evenly spaced tags in 0..100
(0, 20, 40, 60, 80, 100 for six buckets). The tag goes in front of the reply:
``<|MOSS|>: <quality: 60> ...``; at inference the prompt ends ``<|MOSS|>: <quality: 100>``.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Sequence

from alignment.chat_format import Conversation


def bucket_tags(n_buckets: int) -> list[int]:
    """Evenly spaced tags in 0..100, ascending: 6 buckets give 0, 20, 40, 60, 80, 100."""
    if not 2 <= n_buckets <= 101:
        raise ValueError(f"n_buckets: {n_buckets}; between 2 and 101 (the tags are integers 0..100)")
    return [round(100 * i / (n_buckets - 1)) for i in range(n_buckets)]


def check_bucketing(n_buckets: int, rule: str, thresholds: Sequence[float] | None) -> None:
    """Raise ``ValueError``, naming the argument, unless ``tag_scores`` can bucket with these."""
    bucket_tags(n_buckets)
    if rule not in ("quantile", "fixed"):
        raise ValueError(f"rule: {rule!r}: unknown bucketing rule; choose 'quantile' or 'fixed'")
    if rule == "fixed" and (thresholds is None or len(thresholds) != n_buckets - 1
                            or list(thresholds) != sorted(thresholds)):
        raise ValueError(f"thresholds: {thresholds}; rule 'fixed' needs n_buckets - 1 ({n_buckets - 1}) "
                         "ascending scores")


def _quantile_starts(scores: Sequence[float], n_buckets: int) -> tuple[list[float], list[int]]:
    """The sorted scores and the rank where each bucket after the first starts."""
    if not scores:
        raise ValueError("cannot bucket an empty list of scores")
    ordered = sorted(scores)
    return ordered, [(len(ordered) * k) // n_buckets for k in range(1, n_buckets)]


def quantile_edges(scores: Sequence[float], n_buckets: int) -> list[float]:
    """``n_buckets - 1`` inner edges that reproduce ``quantile_buckets`` through ``assign_buckets``,
    ties included: edge ``k`` is the smallest score placed in bucket ``k + 1`` or above (the score
    at rank ``len * (k + 1) // n_buckets`` in sorted order when the scores are distinct). A bucket
    left empty by a tie repeats the next edge; when no score lies at or above bucket ``k + 1`` the
    edge is the next float above the largest score, so every score stays below it."""
    buckets = quantile_buckets(scores, n_buckets)
    top = math.nextafter(max(scores), math.inf)
    lowest = [top] * n_buckets  # lowest[b]: the smallest score in bucket b or above
    for s, b in zip(scores, buckets):
        lowest[b] = min(lowest[b], s)
    for b in range(n_buckets - 2, -1, -1):
        lowest[b] = min(lowest[b], lowest[b + 1])
    return lowest[1:]


def quantile_buckets(scores: Sequence[float], n_buckets: int) -> list[int]:
    """Equal-frequency bucket of each score by its rank in sorted order: bucket ``k + 1`` starts
    at rank ``len * (k + 1) // n_buckets`` (the ranks of ``quantile_edges``). Equal scores share
    the bucket where their group starts, so with at least ``n_buckets`` scores the lowest is in
    bucket 0, and a large tie cannot push low scores into a high bucket."""
    ordered, starts = _quantile_starts(scores, n_buckets)
    return [bisect.bisect_right(starts, bisect.bisect_left(ordered, s)) for s in scores]


def assign_buckets(scores: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Bucket index of each score: the number of edges at or below it."""
    if list(edges) != sorted(edges):
        raise ValueError(f"bucket edges must be ascending, got {list(edges)}")
    return [bisect.bisect_right(edges, s) for s in scores]


def tag_scores(scores: Sequence[float], n_buckets: int = 6, rule: str = "quantile",
               thresholds: Sequence[float] | None = None) -> tuple[list[int], list[float]]:
    """The quality tag of each score, and the edges used (``rule``: quantile or fixed).
    ``assign_buckets(scores, edges)`` gives the same buckets, ties at an edge included. A tag that
    no score receives (a tie spanning a bucket, or a threshold outside the scores) is warned about."""
    check_bucketing(n_buckets, rule, thresholds)
    tags = bucket_tags(n_buckets)
    if rule == "quantile":
        buckets, edges = quantile_buckets(scores, n_buckets), quantile_edges(scores, n_buckets)
    else:
        edges = list(thresholds)
        buckets = assign_buckets(scores, edges)
    empty = [tags[b] for b in range(n_buckets) if b not in set(buckets)]
    if empty:
        warnings.warn(f"PAT tags {empty} have no training example ({len(scores)} scores, rule {rule!r}, "
                      f"edges {edges}): tied scores or thresholds outside the scores left them empty",
                      stacklevel=2)
    return [tags[b] for b in buckets], edges


def tag_conversation(conv: Conversation, tag: int) -> Conversation:
    """The conversation with its last reply tagged ``<quality: tag>``."""
    return conv.with_last_reply(conv.turns[-1].moss, quality=tag)
