"""The synthetic HHH conversation world with its gold judge (see docs/world.md)."""

from alignment.world.judge import breakdown, gold_score
from alignment.world.labeller import AIFeedbackLabeller
from alignment.world.sources import NUM_SOURCES, respond
from alignment.world.world import World, WorldPrompt, WorldSpec

__all__ = [
    "AIFeedbackLabeller", "NUM_SOURCES", "World", "WorldPrompt", "WorldSpec", "breakdown", "gold_score",
    "respond",
]
