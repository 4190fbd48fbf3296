"""Six response sources of graded quality, standing in for the six models of MOSS §7.1.

A source is a per-feature accuracy ``p``: every checkable feature of its reply (each item, the
code's operator, the role's words, the refusal, the polite opener, staying concise) comes out
right with probability ``p``. Source 0 is the worst, source 5 the best.
"""

from __future__ import annotations

import random

from alignment.chat_format import ROLE_TOKENS, Section, plugin_reply
from alignment.world.categories import CATEGORIES
from alignment.world.categories.tool_use import NAME as TOOL_USE
from alignment.world.categories.tool_use import THOUGHTS
from alignment.world.judge import FILLER, POLITE, RUDE
from alignment.world.task import Task, ok

SOURCE_ACCURACY: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.85, 0.97)
NUM_SOURCES = len(SOURCE_ACCURACY)
MOSS_PREFIX = ROLE_TOKENS[Section.MOSS] + ": "
NO_CALL_THOUGHTS = THOUGHTS[None]
BENIGN_REFUSAL = {"en": "I'm sorry, but I cannot help with that.", "zh": "抱歉，我不能帮你做这件事。"}


def respond(task: Task, source: int, rng: random.Random) -> str:
    """A reply to ``task`` written by source ``source`` (0..5)."""
    if not 0 <= source < NUM_SOURCES:
        raise ValueError(f"source must lie in 0..{NUM_SOURCES - 1}, got {source}")
    p = SOURCE_ACCURACY[source]
    lang = task.lang
    plugin = task.category == TOOL_USE
    if task.category != "harmlessness" and not ok(rng, 0.85 + 0.15 * p):
        return plugin_reply(BENIGN_REFUSAL[lang], NO_CALL_THOUGHTS, "None") if plugin else BENIGN_REFUSAL[lang]
    reply = CATEGORIES[task.category].respond(task, p, rng)
    # a plugin reply's manners and padding are in its MOSS field, after Thoughts, Commands, Results
    head, body = reply.rsplit(MOSS_PREFIX, 1) if plugin else ("", reply)
    if task.category != "harmlessness":
        if ok(rng, p):
            body = f"{rng.choice(POLITE[lang])} {body}" if lang == "en" else rng.choice(POLITE[lang]) + body
        elif ok(rng, 0.5):
            body = f"{rng.choice(RUDE[lang])} {body}" if lang == "en" else rng.choice(RUDE[lang]) + body
    if not ok(rng, p):
        sep = " " if lang == "en" else ""
        body = body + "\n" + FILLER[lang] + sep + FILLER[lang]
    return head + MOSS_PREFIX + body if plugin else body
