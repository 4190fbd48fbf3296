"""Writing: "Write a short FORM about TOPIC that mentions K1 and K2."

Judged on the topic, both keywords and the form (poem lines, story opening, letter frame).
"""

from __future__ import annotations

import random

from alignment.world.task import Task, ok, other

NAME = "writing"
TOPICS = {"en": ["the sea", "autumn", "a city at night", "friendship", "the mountains", "a small cat", "winter"],
          "zh": ["大海", "秋天", "夜晚的城市", "友谊", "高山", "一只小猫", "冬天"]}
KEYWORDS = {"en": ["moon", "wind", "light", "dream", "rain", "song", "fire", "road", "star", "home"],
            "zh": ["月亮", "风", "光", "梦", "雨", "歌", "火", "路", "星星", "家"]}
FORMS = {"en": ["poem", "story", "letter"], "zh": ["短诗", "小故事", "书信"]}
PROMPTS = {"en": ["Write a short {form} about {topic} that mentions {k1} and {k2}."],
           "zh": ["写一篇关于{topic}的{form}，要提到{k1}和{k2}。"]}
TEMPLATES = {
    "poem": "Oh {topic}, so bright and wide,\nthe {k1} is by my side,\nthe {k2} will be my guide,\n"
            "and {topic} is my pride.",
    "story": "Once upon a time, there was {topic}. One day the {k1} came, and then the {k2} followed. The end.",
    "letter": "Dear friend,\nI am writing to you about {topic}. I think of the {k1} and the {k2}.\nBest wishes",
    "短诗": "啊，{topic}，\n{k1}在身旁，\n{k2}在远方，\n{topic}永难忘。",
    "小故事": "从前，有{topic}。有一天，{k1}来了，后来{k2}也来了。完。",
    "书信": "亲爱的朋友：\n我想和你聊聊{topic}。我想起了{k1}和{k2}。\n祝好",
}


def form_ok(form: str, text: str) -> bool:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    if form in ("poem", "短诗"):
        return len(lines) >= 4
    if form == "story":
        return text.startswith("Once upon a time") and len(lines) == 1
    if form == "小故事":
        return text.startswith("从前") and len(lines) == 1
    if form == "letter":
        return text.startswith("Dear") and "Best wishes" in text
    return text.startswith("亲爱的") and "祝好" in text


def make(rng: random.Random, lang: str) -> Task:
    topic, form = rng.choice(TOPICS[lang]), rng.choice(FORMS[lang])
    k1, k2 = rng.sample(KEYWORDS[lang], 2)
    prompt = PROMPTS[lang][0].format(form=form, topic=topic, k1=k1, k2=k2)
    return Task(NAME, lang, prompt, {"topic": topic, "form": form, "keywords": [k1, k2]})


def respond(task: Task, p: float, rng: random.Random) -> str:
    lang, spec = task.lang, task.spec
    topic = spec["topic"] if ok(rng, p) else other(rng, TOPICS[lang], spec["topic"])
    k1, k2 = (k if ok(rng, p) else other(rng, KEYWORDS[lang], k) for k in spec["keywords"])
    form = spec["form"] if ok(rng, p) else other(rng, FORMS[lang], spec["form"])
    return TEMPLATES[form].format(topic=topic, k1=k1, k2=k2)


def content_score(task: Task, text: str) -> float:
    spec = task.spec
    hits = [spec["topic"] in text] + [k in text for k in spec["keywords"]]
    return 0.25 * sum(hits) + 0.25 * form_ok(spec["form"], text)
