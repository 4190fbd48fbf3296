"""Brainstorming: "Give me N ideas for TOPIC." Judged on the count and on items from the topic."""

from __future__ import annotations

import random

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


def numbered_items(text: str) -> list[str]:
    """The items of the numbered lines of ``text`` (``1. cake`` gives ``cake``), in order: what
    ``[m.group(2) for m in re.finditer(r"^\\s*(\\d+)\\.\\s*(.+?)\\s*$", text, re.MULTILINE)]`` gives,
    whitespace running across newlines included (``1.\\n cake`` is an item too).

    That regex backtracks quadratically on long runs of blank lines; this scan moves forward only
    (a failed line start skips every line start its whitespace run covers), so its work is linear
    in ``len(text)`` whatever a reply holds.
    """
    items: list[str] = []
    n, p = len(text), 0  # p: a line start
    while p < n:
        q = _skip_space(text, p)
        d = q
        while d < n and text[d].isdecimal():  # \d: a Unicode decimal digit
            d += 1
        if d == q or d == n or text[d] != ".":
            p = text.find("\n", q) + 1  # the line starts up to q skip to q and fail as well
            if p == 0:
                break
            continue
        r = _skip_space(text, d + 1)
        if r == n:  # only whitespace is left: the regex backtracks into it for a one-character item,
            last = len(text.rstrip("\n")) - 1  # its last character that is not a newline
            if last > d:
                items.append(text[last])
            break
        line_end = text.find("\n", r)
        line_end = n if line_end < 0 else line_end
        item = text[r:line_end].rstrip()
        items.append(item)
        e = r + len(item)
        m = _skip_space(text, e)
        if m == n:
            break
        end = text.rfind("\n", e, m)  # the match ends before the last newline of its whitespace run
        p = end if text[end - 1] == "\n" else end + 1
    return items


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():  # \s: Unicode whitespace
        i += 1
    return i


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
    items = [x.strip(" .。") for x in numbered_items(text)]
    if not items:
        return 0.0
    valid = len({x for x in items if x in allowed})
    return 0.4 * (len(items) == n) + 0.6 * min(valid, n) / n
