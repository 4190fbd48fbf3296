"""Gold-judge evaluation of generated replies on held-out world prompts."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Sequence

from alignment.world import NUM_SOURCES, World, WorldPrompt, respond


def gold_report(world: World, prompts: Sequence[WorldPrompt], replies: Sequence[str]) -> dict[str, float]:
    """Mean gold score overall and per category."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    scores = [world.judge(p, r) for p, r in zip(prompts, replies)]
    by_cat: dict[str, list[float]] = defaultdict(list)
    for p, s in zip(prompts, scores):
        by_cat[p.task.category].append(s)
    out = {"gold": statistics.fmean(scores)}
    out.update({f"gold/{c}": statistics.fmean(v) for c, v in sorted(by_cat.items())})
    return out


def source_reference(world: World, prompts: Sequence[WorldPrompt], seed: int = 0) -> list[float]:
    """Mean gold score of each of the six sources on ``prompts`` (the world's quality ladder)."""
    rng = random.Random(f"reference:{seed}")
    return [statistics.fmean(world.judge(p, respond(p.task, s, rng)) for p in prompts) for s in range(NUM_SOURCES)]
