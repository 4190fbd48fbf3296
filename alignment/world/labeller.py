"""The noisy pairwise AI-feedback labeller (stands in for GPT-4 in MOSS §7.1).

P(a preferred over b) = sigmoid((gold(a) - gold(b)) / temperature), drawn with a seeded RNG:
a Bradley–Terry labeller whose noise grows with the temperature.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from alignment.world.judge import gold_score
from alignment.world.task import Task


@dataclass(frozen=True)
class Label:
    """One labelled pair: indices into the candidate list, winner first."""

    chosen: int
    rejected: int


class AIFeedbackLabeller:
    def __init__(self, temperature: float = 0.05, seed: int = 0):
        if temperature <= 0:
            raise ValueError(f"labeller temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.rng = random.Random(seed)

    def p_prefer(self, score_a: float, score_b: float) -> float:
        z = (score_a - score_b) / self.temperature
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def label(self, task: Task, a: str, b: str) -> bool:
        """True when the labeller prefers ``a`` over ``b``."""
        return self._prefers(gold_score(task, a), gold_score(task, b))

    def _prefers(self, score_a: float, score_b: float) -> bool:
        return self.rng.random() < self.p_prefer(score_a, score_b)

    def label_all_pairs(self, task: Task, candidates: list[str]) -> list[Label]:
        """Label every pair of candidates (15 pairs for 6 candidates); each is judged once."""
        scores = [gold_score(task, c) for c in candidates]
        labels = []
        for i, j in itertools.combinations(range(len(candidates)), 2):
            labels.append(Label(i, j) if self._prefers(scores[i], scores[j]) else Label(j, i))
        return labels
