"""Preference data for the preference model, as comparison groups.

A comparison group is one context with its candidate replies and the labelled pairs among
them: the world gives 6 candidates and all 15 AI-feedback pairs per prompt (MOSS §7.1); a
preference-pair file gives groups of 2 candidates and 1 pair. Training on a whole group scores
each candidate once, however many pairs it appears in (as InstructGPT trains on all K-choose-2
comparisons of a prompt as one batch element).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignment.chat_format import Conversation
from alignment.data.loaders import MultiResponse, PreferencePair
from alignment.world import AIFeedbackLabeller, World, WorldPrompt


@dataclass(frozen=True)
class ComparisonGroup:
    context: Conversation
    candidates: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]  # (chosen index, rejected index)


def world_groups(
    world: World, prompts: Sequence[WorldPrompt], labeller: AIFeedbackLabeller, rng: random.Random,
    extra: Sequence[Sequence[str]] = (), extra_labeller: AIFeedbackLabeller | None = None,
) -> list[ComparisonGroup]:
    """Six candidates per prompt (one per source), all 15 pairs labelled by the AI labeller.

    ``extra[i]`` (when given) adds more candidates to prompt ``i``'s set, e.g. replies sampled from
    the SFT model as MOSS §7.1 does, and every pair that involves one is labelled too (21 pairs for
    7 candidates), by ``extra_labeller`` when given, so that the sources' labels (and every later
    draw of ``labeller``) stay the same with or without the extra candidates."""
    if len(extra) > len(prompts):
        raise ValueError(f"{len(extra)} lists of extra candidates for {len(prompts)} prompts")
    judge = extra_labeller or labeller
    groups = []
    for i, prompt in enumerate(prompts):
        sources = world.candidates(prompt, rng)
        pairs = [(lb.chosen, lb.rejected) for lb in labeller.label_all_pairs(prompt.task, sources)]
        cands = sources + (list(extra[i]) if i < len(extra) else [])
        for j in range(len(sources), len(cands)):  # each extra candidate against every earlier one
            pairs += [(j, k) if judge.label(prompt.task, cands[j], cands[k]) else (k, j) for k in range(j)]
        groups.append(ComparisonGroup(prompt.conversation(), tuple(cands), tuple(pairs)))
    return groups


def pair_groups(pairs: Sequence[PreferencePair]) -> list[ComparisonGroup]:
    """One group of two candidates per preference pair (chosen first)."""
    return [ComparisonGroup(p.context, (p.chosen, p.rejected), ((0, 1),)) for p in pairs]


def ranked_pairs(scores: Sequence[float]) -> tuple[tuple[int, int], ...]:
    """Every pair of candidates with different scores, as (higher, lower) indices (ties carry no preference)."""
    return tuple((i, j) if scores[i] > scores[j] else (j, i)
                 for i, j in itertools.combinations(range(len(scores)), 2) if scores[i] != scores[j])


def multi_response_groups(records: Sequence[MultiResponse]) -> list[ComparisonGroup]:
    """Every pair of a scored response set, the higher score chosen; sets without a pair are left out."""
    groups = [ComparisonGroup(rec.context, tuple(rec.responses), ranked_pairs(rec.scores)) for rec in records]
    return [g for g in groups if g.pairs]
