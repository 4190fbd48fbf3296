"""The synthetic HHH world: seeded prompts with split-disjoint texts, histories of 1–3 turns,
SFT conversations from a mix of graded sources, and candidate sets for preference data.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignment.chat_format import PLAIN_META, Conversation, ToolSwitch, Turn, meta_instruction, reply_turn
from alignment.world import sources
from alignment.world.categories import CATEGORIES, PAPER_MIX
from alignment.world.categories.tool_use import NAME as TOOL_USE
from alignment.world.judge import gold_score
from alignment.world.task import Task

SPLITS = ("train", "val", "test")
TOOL_META = meta_instruction(ToolSwitch(inner_thoughts=True,
                                        enabled=frozenset({"Web search", "Calculator", "Equation solver"})))
"""The meta-instruction of a tool-use request: inner thoughts, search, calculator and solver on."""


@dataclass(frozen=True)
class WorldPrompt:
    """A conversation up to its last human message; ``task`` is that message and its answer key."""

    uid: str
    history: tuple[Turn, ...]
    task: Task

    @property
    def text(self) -> str:
        """The last human message."""
        return self.task.prompt

    def conversation(self, reply: str = "", quality: int | None = None) -> Conversation:
        """The conversation answered by ``reply`` (plain, or a plugin turn: ``reply_turn``); a tool-use
        request comes with the meta-instruction that switches MOSS's tools on."""
        meta = TOOL_META if self.task.category == TOOL_USE else PLAIN_META
        return Conversation(meta, self.history + (reply_turn(self.task.prompt, reply, quality),))


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    category_weights: dict[str, float] | None = None  # default: the paper's SFT mix
    tool_share: float = 0.0  # share of tool-use requests; the other categories keep their proportions
    zh_share: float = 0.3
    turn_weights: Sequence[float] = (0.6, 0.3, 0.1)  # shares of 1, 2 and 3 turns
    val_fraction: float = 0.1
    test_fraction: float = 0.1


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """The split a prompt text belongs to, fixed by its hash: a text is in exactly one split."""
    u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class World:
    def __init__(self, spec: WorldSpec = WorldSpec()):
        weights = dict(spec.category_weights or PAPER_MIX)
        unknown = set(weights) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown world categories {sorted(unknown)}; choose from {sorted(CATEGORIES)}")
        if not 0.0 <= spec.tool_share < 1.0:
            raise ValueError(f"tool_share: {spec.tool_share}; a share in [0, 1)")
        if spec.tool_share > 0:
            total = sum(w for c, w in weights.items() if c != TOOL_USE)
            weights = {c: w * (1 - spec.tool_share) / total for c, w in weights.items() if c != TOOL_USE}
            weights[TOOL_USE] = spec.tool_share
        self.spec = spec
        self.categories = sorted(c for c, w in weights.items() if w > 0)
        self.weights = [weights[c] for c in self.categories]
        # earlier rounds of a conversation are plain requests (a tool request sets the meta-instruction)
        self.history_weights = [w * (c != TOOL_USE) for c, w in zip(self.categories, self.weights)]

    def _task(self, rng: random.Random, history: bool = False) -> Task:
        category = rng.choices(self.categories, self.history_weights if history else self.weights)[0]
        lang = "zh" if rng.random() < self.spec.zh_share else "en"
        return CATEGORIES[category].make(rng, lang)

    def prompts(self, split: str, n: int, offset: int = 0) -> list[WorldPrompt]:
        """``n`` prompts of ``split``; the same (seed, split, offset) always gives the same list."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
        rng = random.Random(f"{self.spec.seed}:{split}:{offset}")
        out: list[WorldPrompt] = []
        while len(out) < n:
            task = self._task(rng)
            if split_of(task.prompt, self.spec.val_fraction, self.spec.test_fraction) != split:
                continue
            n_turns = rng.choices(range(1, len(self.spec.turn_weights) + 1), self.spec.turn_weights)[0]
            if task.category == TOOL_USE:  # a fresh conversation: the tool switch is long already
                n_turns = 1
            history = []
            for _ in range(n_turns - 1):  # earlier rounds: good answers, as in a real chat log
                earlier = self._task(rng, history=True)
                history.append(Turn(earlier.prompt, sources.respond(earlier, sources.NUM_SOURCES - 1, rng)))
            out.append(WorldPrompt(f"{split}-{offset + len(out)}", tuple(history), task))
        return out

    def sft_conversations(
        self, n: int, source_weights: Sequence[float], split: str = "train"
    ) -> list[Conversation]:
        """SFT data: ``n`` conversations whose last reply comes from a source drawn by weight."""
        if len(source_weights) != sources.NUM_SOURCES:
            raise ValueError(f"source_weights needs {sources.NUM_SOURCES} entries, got {len(source_weights)}")
        rng = random.Random(f"{self.spec.seed}:sft:{split}")
        convs = []
        for prompt in self.prompts(split, n):
            source = rng.choices(range(sources.NUM_SOURCES), source_weights)[0]
            convs.append(prompt.conversation(sources.respond(prompt.task, source, rng)))
        return convs

    def candidates(self, prompt: WorldPrompt, rng: random.Random) -> list[str]:
        """One reply from each of the six sources (the candidate set of MOSS §7.1)."""
        return [sources.respond(prompt.task, s, rng) for s in range(sources.NUM_SOURCES)]

    def corpus(self, n: int = 3000) -> list[str]:
        """Text for training the tiny tokenizer: rendered conversations from every source."""
        from alignment.chat_format import render

        rng = random.Random(f"{self.spec.seed}:corpus")
        texts = []
        for split in SPLITS:
            for prompt in self.prompts(split, n // 3, offset=10**6):
                reply = sources.respond(prompt.task, rng.randrange(sources.NUM_SOURCES), rng)
                texts.append(render(prompt.conversation(reply)))
        return texts

    @staticmethod
    def judge(prompt: WorldPrompt, response: str) -> float:
        return gold_score(prompt.task, response)
