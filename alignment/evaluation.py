"""Gold-judge evaluation of generated replies on held-out world prompts."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Sequence

from alignment.world import NUM_SOURCES, World, WorldPrompt, respond
from alignment.world.categories.tool_use import called, is_tool_task


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
    return out | tool_report(prompts, replies, scores)


def tool_report(prompts: Sequence[WorldPrompt], replies: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """On the tool-use requests, per kind (arithmetic, equation, fact) and in all: the share of
    replies that call the task's tool (``tool_calls/…``) and the mean gold score (``gold/tool_use/…``).
    Empty when no request asks for a tool."""
    calls: dict[str, list[bool]] = defaultdict(list)
    gold: dict[str, list[float]] = defaultdict(list)
    for p, r, s in zip(prompts, replies, scores):
        if is_tool_task(p):
            for key in ("all", p.task.spec["kind"]):
                calls[key].append(called(p.task, r))
                gold[key].append(s)
    out = {f"tool_calls/{k}": statistics.fmean(v) for k, v in sorted(calls.items())}
    return out | {f"gold/tool_use/{k}": statistics.fmean(v) for k, v in sorted(gold.items()) if k != "all"}


def source_reference(world: World, prompts: Sequence[WorldPrompt], seed: int = 0) -> list[float]:
    """Mean gold score of each of the six sources on ``prompts`` (the world's quality ladder)."""
    rng = random.Random(f"reference:{seed}")
    return [statistics.fmean(world.judge(p, respond(p.task, s, rng)) for p in prompts) for s in range(NUM_SOURCES)]
