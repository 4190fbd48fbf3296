"""Complex instruction: "Write these words in reverse order, separated by commas: A, B, C."

Judged position by position on the reversed list: the judge reads the world's words in the
order the reply mentions them, whatever the wording around them.
"""

from __future__ import annotations

import random
import re

from alignment.world.task import Task, ok

NAME = "complex_instruction"
WORDS = {
    "en": ["apple", "river", "mountain", "pencil", "garden", "window", "candle", "bridge", "forest",
           "rocket", "violin", "tiger", "cloud", "mirror", "island", "lantern"],
    "zh": ["苹果", "河流", "高山", "铅笔", "花园", "窗户", "蜡烛", "桥梁", "森林", "火箭", "小提琴", "老虎"],
}
SEP = {"en": ", ", "zh": "，"}
PROMPTS = {
    "en": ["Write these words in reverse order, separated by commas: {words}.",
           "Reverse the order of these words and separate them with commas: {words}."],
    "zh": ["请把这些词倒序排列，用逗号隔开：{words}。"],
}
HEAD = {"en": "The words in reverse order are: ", "zh": "倒序排列为："}
WORD_RE = {lang: re.compile("|".join(sorted(map(re.escape, ws), key=len, reverse=True))) for lang, ws in WORDS.items()}


def make(rng: random.Random, lang: str) -> Task:
    words = rng.sample(WORDS[lang], rng.choice([3, 4]))
    prompt = rng.choice(PROMPTS[lang]).format(words=SEP[lang].join(words))
    return Task(NAME, lang, prompt, {"words": words})


def respond(task: Task, p: float, rng: random.Random) -> str:
    out = list(reversed(task.spec["words"]))
    if not ok(rng, p):
        out = list(task.spec["words"])  # forgot to reverse
    if not ok(rng, p):
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    if not ok(rng, p):
        out[rng.randrange(len(out))] = rng.choice(WORDS[task.lang])
    if not ok(rng, p):
        out.pop(rng.randrange(len(out)))
    end = "." if task.lang == "en" else "。"
    return HEAD[task.lang] + SEP[task.lang].join(out) + end


def content_score(task: Task, text: str) -> float:
    target = list(reversed(task.spec["words"]))
    got = WORD_RE[task.lang].findall(text)
    if not got:
        return 0.0
    hits = sum(a == b for a, b in zip(got, target))
    return 0.8 * hits / len(target) + 0.2 * (len(got) == len(target))
