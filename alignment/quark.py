"""Quark (Lu et al., 2022): PAT made online. The maths of its rounds, without Ray or models.

Round 1 is PAT: the SFT conversations scored by the preference model, tagged by quantile bucket
(``alignment.pat``), fine-tuned on. Each later round samples replies to training prompts from the
current model at tags drawn across the buckets, scores them, adds them to the **pool** (the SFT
data and every earlier round's samples), re-buckets the whole pool's scores into the tags
(quantiles over the pool, ``rebucket``) and fine-tunes on the tagged pool with a per-token KL
penalty to the SFT model (``alignment.losses.quark``).

The reference (SFT) model sees each conversation without its tag. The tag sits in the MOSS
prefix, which carries no loss, so the labelled tokens of the tagged and the untagged encoding
are the same tokens; when truncation (the last ``max_length`` tokens are kept) cuts the two
differently, they still agree from the end: ``align_reference`` pairs them from the last one.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignment.chat_format import Conversation, Turn
from alignment.pat import bucket_tags, tag_conversation, tag_scores


@dataclass(frozen=True)
class PoolRecord:
    """One scored reply of the pool: the whole conversation (its last reply the one scored), the
    preference model's score of that reply, and the round that added it (1: the SFT data)."""

    conversation: Conversation
    score: float
    round: int

    @property
    def reply(self) -> str:
        return self.conversation.turns[-1].reply

    def to_json(self) -> dict[str, Any]:
        return {"conversation": dataclasses.asdict(self.conversation), "score": self.score, "round": self.round}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> PoolRecord:
        c = row["conversation"]
        conv = Conversation(c["meta_instruction"], tuple(Turn(**t) for t in c["turns"]))
        return cls(conv, float(row["score"]), int(row["round"]))


class Pool:
    """Quark's data pool: every scored reply so far, in the order added (round by round)."""

    def __init__(self, records: Iterable[PoolRecord] = ()) -> None:
        self._records: list[PoolRecord] = []
        rows = list(records)
        for k in sorted({r.round for r in rows}):
            self.add([r for r in rows if r.round == k])

    def add(self, records: Iterable[PoolRecord]) -> None:
        """Append one round's records; each round is added once, after the rounds before it."""
        new = list(records)
        if not new:
            return
        rounds = sorted({r.round for r in new})
        if len(rounds) > 1:
            raise ValueError(f"pool: add one round at a time, got rounds {rounds}")
        if self._records and rounds[0] <= self.rounds()[-1]:
            raise ValueError(f"pool: round {rounds[0]} added after round {self.rounds()[-1]}; "
                             "rounds go in order, once each")
        self._records.extend(new)

    @property
    def records(self) -> list[PoolRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def scores(self) -> list[float]:
        return [r.score for r in self._records]

    def rounds(self) -> list[int]:
        """The rounds the pool holds, ascending."""
        return sorted({r.round for r in self._records})

    def of_round(self, k: int) -> list[PoolRecord]:
        return [r for r in self._records if r.round == k]

    def counts(self) -> dict[int, int]:
        """How many records each round added."""
        return {k: len(self.of_round(k)) for k in self.rounds()}


def rebucket(pool: Pool, n_buckets: int) -> tuple[list[int], list[float]]:
    """Each pool record's quality tag by equal-frequency (quantile) buckets over the **whole pool's**
    scores, and the bucket edges: PAT's ``tag_scores`` applied to the pool, so ties and edges follow
    PAT's rules exactly."""
    if not len(pool):
        raise ValueError("cannot re-bucket an empty pool")
    return tag_scores(pool.scores(), n_buckets, "quantile")


def tagged_pool(pool: Pool, tags: Sequence[int]) -> list[Conversation]:
    """The pool's conversations with their last reply tagged ``<quality: tag>``."""
    if len(tags) != len(pool):
        raise ValueError(f"{len(tags)} tags for a pool of {len(pool)}")
    return [tag_conversation(r.conversation, t) for r, t in zip(pool.records, tags)]


def draw_tags(n: int, n_buckets: int, rng: random.Random) -> list[int]:
    """``n`` exploration tags drawn across the buckets: each bucket's tag as often as the others
    (``n // n_buckets`` each, the remainder drawn without repeats), in a shuffled order."""
    tags = bucket_tags(n_buckets)
    out = tags * (n // n_buckets) + rng.sample(tags, n % n_buckets)
    rng.shuffle(out)
    return out


def subset_size(pool_size: int, n: int) -> int:
    """How many records ``train_subset`` keeps of a pool of ``pool_size``."""
    return pool_size if n < 0 else min(n, pool_size)


def train_subset(pool_size: int, n: int, rng: random.Random) -> list[int]:
    """Indices of the pool records a round trains on: all of them (``n < 0`` or ``n >= pool_size``,
    in order), else ``n`` drawn uniformly without replacement (sorted)."""
    if subset_size(pool_size, n) == pool_size:
        return list(range(pool_size))
    return sorted(rng.sample(range(pool_size), n))


def align_reference(n_policy: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's next-token log-distributions ``ref`` (``[n_ref, V]``, one per labelled token
    of the untagged encoding) laid against the ``n_policy`` labelled tokens of the tagged encoding,
    pairing them from the last token: ``([n_policy, V], mask [n_policy])``, the mask 0 (and the
    row uniform) where the reference has no token (truncation cut it)."""
    n = min(n_policy, ref.size(0))
    out = torch.full((n_policy, ref.size(1)), -torch.log(torch.tensor(float(ref.size(1)))).item(), dtype=ref.dtype)
    mask = torch.zeros(n_policy, dtype=torch.float32)
    if n:
        out[n_policy - n:] = ref[ref.size(0) - n:]
        mask[n_policy - n:] = 1.0
    return out, mask


def round_summary(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{round: {"gold", "pm_score", "kl"}}`` from each round's frontier point (``round``, ``gold``,
    ``pm``, ``kl``, measured like every method's point on the reward-KL plane)."""
    return {str(p["round"]): {"gold": p.get("gold"), "pm_score": p["pm"], "kl": p["kl"]} for p in points}
