"""Brainstorming: "Give me N ideas for TOPIC." Judged on the count and on items from the topic."""

from __future__ import annotations

import random
import re

from alignment.world.task import Task, ok, other

NAME = "brainstorming"
TOPICS = {
    "en": {
        "a birthday party": ["balloons", "cake", "music", "games", "photos", "flowers"],
        "a rainy day": ["reading", "baking", "movies", "puzzles", "painting", "board games"],
        "a trip to the beach": ["swimming", "sunscreen", "sandcastles", "volleyball", "snorkeling", "picnic"],
        "staying healthy": ["walking", "sleep", "water", "vegetables", "yoga", "stretching"],
        "saving money": ["budget", "coupons", "cooking at home", "used books", "biking", "savings account"],
        "learning a language": ["flashcards", "podcasts", "pen pals", "songs", "subtitles", "daily practice"],
        "a school science fair": ["volcano", "magnets", "plant growth", "solar oven", "crystals", "circuits"],
        "a team meeting": ["agenda", "timer", "notes", "feedback", "goals", "coffee"],
    },
    "zh": {
        "生日派对": ["气球", "蛋糕", "音乐", "游戏", "拍照", "鲜花"],
        "下雨天": ["读书", "烘焙", "看电影", "拼图", "画画", "下棋"],
        "海边旅行": ["游泳", "防晒霜", "堆沙堡", "排球", "浮潜", "野餐"],
        "保持健康": ["散步", "睡眠", "喝水", "蔬菜", "瑜伽", "拉伸"],
        "省钱": ["预算", "优惠券", "在家做饭", "二手书", "骑车", "储蓄账户"],
        "学习外语": ["单词卡", "播客", "笔友", "歌曲", "字幕", "每日练习"],
    },
}
PROMPTS = {
    "en": ["Give me {n} ideas for {topic}.", "List {n} ideas for {topic}.", "Can you suggest {n} ideas for {topic}?"],
    "zh": ["请给我{n}个关于{topic}的点子。", "列出{n}个关于{topic}的点子。"],
}
HEAD = {"en": "Here are {n} ideas for {topic}:", "zh": "以下是{n}个关于{topic}的点子："}
ITEM_RE = re.compile(r"^\s*(\d+)\.\s*(.+?)\s*$", re.MULTILINE)


def make(rng: random.Random, lang: str) -> Task:
    topic = rng.choice(sorted(TOPICS[lang]))
    n = rng.choice([2, 3, 4])
    prompt = rng.choice(PROMPTS[lang]).format(n=n, topic=topic)
    return Task(NAME, lang, prompt, {"topic": topic, "n": n})


def respond(task: Task, p: float, rng: random.Random) -> str:
    lang, topic, n = task.lang, task.spec["topic"], task.spec["n"]
    items = rng.sample(TOPICS[lang][topic], n)
    count = n if ok(rng, p) else max(1, n + rng.choice([-1, 1]))
    pool_other = TOPICS[lang][other(rng, sorted(TOPICS[lang]), topic)]
    out = []
    for i in range(count):
        item = items[i] if i < n else rng.choice(pool_other)
        if not ok(rng, p):
            item = rng.choice(pool_other)
        out.append(item)
    lines = [HEAD[lang].format(n=n, topic=topic)] + [f"{i + 1}. {x}" for i, x in enumerate(out)]
    return "\n".join(lines)


def content_score(task: Task, text: str) -> float:
    n, allowed = task.spec["n"], set(TOPICS[task.lang][task.spec["topic"]])
    items = [m.group(2).strip(" .。") for m in ITEM_RE.finditer(text)]
    if not items:
        return 0.0
    valid = len({x for x in items if x in allowed})
    return 0.4 * (len(items) == n) + 0.6 * min(valid, n) / n
