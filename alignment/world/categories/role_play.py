"""Role play: "Pretend you are a ROLE. SITUATION." Judged on staying in character.

Each role has three signature words; the reply should use all three, use none of another
role's words, and do what the situation asks.
"""

from __future__ import annotations

import random

from alignment.world.task import Task, ok, other

NAME = "role_play"
ROLES = {
    "en": {
        "pirate": ["ahoy", "treasure", "matey"], "chef": ["delicious", "recipe", "kitchen"],
        "knight": ["honor", "sword", "quest"], "robot": ["beep", "circuits", "compute"],
        "wizard": ["spell", "magic", "potion"], "detective": ["clue", "mystery", "evidence"],
        "farmer": ["harvest", "tractor", "barn"], "astronaut": ["orbit", "rocket", "stars"],
    },
    "zh": {
        "海盗": ["啊哈", "宝藏", "伙计"], "厨师": ["美味", "菜谱", "厨房"], "骑士": ["荣誉", "宝剑", "冒险"],
        "机器人": ["哔哔", "电路", "计算"], "巫师": ["咒语", "魔法", "药水"], "侦探": ["线索", "谜团", "证据"],
    },
}
SITUATIONS = {  # request -> phrase the reply must contain
    "en": {"Greet me.": "welcome you", "Tell me about your day.": "spent my day",
           "Say goodbye to me.": "bid you farewell", "Introduce yourself.": "introduce myself",
           "Give me some advice.": "advise you", "Tell me a secret.": "tell you a secret"},
    "zh": {"跟我打个招呼。": "欢迎你", "说说你的一天。": "度过了我的一天", "跟我道别。": "向你告别",
           "介绍一下你自己。": "介绍一下自己"},
}
PROMPTS = {"en": ["Pretend you are a {role}. {situation}", "You are a {role} now. {situation}"],
           "zh": ["假装你是一个{role}。{situation}", "现在你是一个{role}。{situation}"]}
REPLY = {"en": "{w0}! I am a {role} and I {phrase}, with {w1} and {w2}.",
         "zh": "{w0}！我是一个{role}，我{phrase}，带着{w1}和{w2}。"}


def make(rng: random.Random, lang: str) -> Task:
    role = rng.choice(sorted(ROLES[lang]))
    situation = rng.choice(sorted(SITUATIONS[lang]))
    prompt = rng.choice(PROMPTS[lang]).format(role=role, situation=situation)
    return Task(NAME, lang, prompt, {"role": role, "situation": situation})


def respond(task: Task, p: float, rng: random.Random) -> str:
    lang, role = task.lang, task.spec["role"]
    words = list(ROLES[lang][role])
    for i in range(3):
        if not ok(rng, p):
            words[i] = rng.choice(ROLES[lang][other(rng, sorted(ROLES[lang]), role)])
    phrase = SITUATIONS[lang][task.spec["situation"]]
    if not ok(rng, p):
        phrase = SITUATIONS[lang][other(rng, sorted(SITUATIONS[lang]), task.spec["situation"])]
    w0 = words[0].capitalize() if lang == "en" else words[0]
    return REPLY[lang].format(w0=w0, w1=words[1], w2=words[2], role=role, phrase=phrase)


def content_score(task: Task, text: str) -> float:
    lang, role = task.lang, task.spec["role"]
    low = text.lower()
    own = sum(w in low for w in ROLES[lang][role]) / 3
    foreign = any(w in low for r, ws in ROLES[lang].items() if r != role for w in ws)
    situation = SITUATIONS[lang][task.spec["situation"]] in low
    return 0.5 * own + 0.25 * (not foreign) * (own > 0) + 0.25 * situation
