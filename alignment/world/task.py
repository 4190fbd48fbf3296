"""A task of the synthetic HHH world: one human message plus the facts its judge checks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Task:
    """One human request. ``spec`` holds the checkable facts (answer key) for the gold judge."""

    category: str
    lang: str  # "en" | "zh"
    prompt: str
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Category(Protocol):
    """A prompt category: it writes prompts, graded responses, and scores any response.

    ``respond`` gets ``p``, the chance that each checkable feature comes out right: the six
    sources of the world differ only in ``p``. ``content_score`` reads the text alone.
    """

    NAME: str

    def make(self, rng: random.Random, lang: str) -> Task: ...

    def respond(self, task: Task, p: float, rng: random.Random) -> str: ...

    def content_score(self, task: Task, text: str) -> float: ...


def ok(rng: random.Random, p: float) -> bool:
    """Whether one feature of a response comes out right, for a source of accuracy ``p``."""
    return rng.random() < p


def other(rng: random.Random, pool: list, exclude: Any) -> Any:
    """A random element of ``pool`` different from ``exclude``."""
    choices = [x for x in pool if x != exclude]
    return rng.choice(choices)
