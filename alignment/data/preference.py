"""Preference data for the preference model: AI-feedback pairs on the world, or real files."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from alignment.data.loaders import MultiResponse, PreferencePair
from alignment.world import AIFeedbackLabeller, World, WorldPrompt


def world_pairs(
    world: World, prompts: Sequence[WorldPrompt], labeller: AIFeedbackLabeller, rng: random.Random
) -> list[PreferencePair]:
    """Six candidates per prompt (one per source), all 15 pairs labelled by the AI labeller."""
    pairs = []
    for prompt in prompts:
        cands = world.candidates(prompt, rng)
        for label in labeller.label_all_pairs(prompt.task, cands):
            pairs.append(PreferencePair(prompt.conversation(), cands[label.chosen], cands[label.rejected]))
    return pairs


def multi_response_pairs(records: Sequence[MultiResponse]) -> list[PreferencePair]:
    """Every pair of a scored response set, the higher score chosen (ties carry no preference)."""
    pairs = []
    for rec in records:
        for i, j in itertools.combinations(range(len(rec.responses)), 2):
            if rec.scores[i] == rec.scores[j]:
                continue
            hi, lo = (i, j) if rec.scores[i] > rec.scores[j] else (j, i)
            pairs.append(PreferencePair(rec.context, rec.responses[hi], rec.responses[lo]))
    return pairs
