"""Tool use: arithmetic ("What is 37*48+12?"), linear equations ("Solve 3*x+7=22.") and facts of
the search corpus ("What is the capital of Canada?"), asked with MOSS's tools switched on.

A reply is a plugin turn (``alignment.chat_format.plugin_reply``): Inner Thoughts, Commands, the
Results the program wrote, then the MOSS reply. A source calls the right tool with probability
``0.6 + 0.4 p`` and otherwise guesses (Commands ``None``); a caller copies the operands into the command and
the result into its reply, each right with a chance that grows with ``p``; a guess is right with a
small chance (arithmetic and equations) or a fair one (facts). The Results are the real tools'
output (``alignment.tools.run_commands``).

The judge's content score: 0.7 for the right final answer (the last number of the MOSS reply,
numerically; for facts, the answer's name in it) plus 0.3 for well-formed commands (at least one
call, every call well formed and of the task's tool).
"""

from __future__ import annotations

import functools
import random
import re
from fractions import Fraction

from alignment.chat_format import moss_body, plugin_reply, reply_turn
from alignment.tools import parse_calls, run_commands
from alignment.tools.calculator import evaluate, format_number
from alignment.world.task import Task, ok, other

NAME = "tool_use"
TOOL_OF = {"arithmetic": "Calculate", "equation": "Solve", "fact": "Search"}
ENABLED = frozenset(TOOL_OF.values())
CAPITALS = {
    "France": "Paris", "the United Kingdom": "London", "Japan": "Tokyo", "China": "Beijing",
    "Australia": "Canberra", "Canada": "Ottawa", "Brazil": "Brasilia", "Egypt": "Cairo", "Germany": "Berlin",
    "Italy": "Rome", "Spain": "Madrid", "Russia": "Moscow", "India": "New Delhi",
}
PROMPTS = {
    ("arithmetic", "en"): ["What is {shown}?", "Please calculate {shown}.", "Compute {shown} for me."],
    ("arithmetic", "zh"): ["{shown}等于多少？", "请计算{shown}。"],
    ("equation", "en"): ["Solve the equation {shown}.", "Find x if {shown}."],
    ("equation", "zh"): ["解方程{shown}。", "求x：{shown}。"],
    ("fact", "en"): ["What is the capital of {shown}?", "Which city is the capital of {shown}?"],
}
THOUGHTS = {
    "arithmetic": "The user wants a calculation. I should use the calculator.",
    "equation": "The user wants an equation solved. I should use the equation solver.",
    "fact": "The user asks a factual question. I should search for it.",
    None: "I can answer this directly.",
}
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
DIGITS_RE = re.compile(r"\d+")
ANSWER_WEIGHT = 0.7
CALL_BASE = 0.6
"""A source of accuracy ``p`` calls the tool with probability ``CALL_BASE + (1 - CALL_BASE) * p``."""


def make(rng: random.Random, lang: str) -> Task:
    kind = rng.choice(["arithmetic", "equation", "fact"] if lang == "en" else ["arithmetic", "equation"])
    if kind == "arithmetic":
        n = rng.choice([2, 2, 3])
        terms = [str(rng.randint(2, 99)) for _ in range(n)]
        shown = terms[0] + "".join(rng.choice("+-*") + t for t in terms[1:])
        call = shown
    elif kind == "equation":
        a, x, b = rng.randint(2, 9), rng.randint(-9, 12), rng.randint(1, 30)
        shown = call = f"{a}*x+{b}={a * x + b}"
    else:
        shown = rng.choice(sorted(CAPITALS))
        call = f"capital of {shown.removeprefix('the ')}"
    prompt = rng.choice(PROMPTS[kind, lang]).format(shown=shown)
    # the answer key, computed here (not by the tools, whose worker may time out)
    answer = CAPITALS[shown] if kind == "fact" else str(x) if kind == "equation" else format_number(evaluate(shown))
    return Task(NAME, lang, prompt, {"kind": kind, "shown": shown, "call": call, "answer": answer})


@functools.lru_cache(maxsize=65536)
def _results(commands: str) -> str:
    return run_commands(commands, ENABLED)


def _miscopy(rng: random.Random, text: str) -> str:
    """``text`` with one of its numbers changed."""
    m = rng.choice(list(DIGITS_RE.finditer(text)))
    value = max(1, int(m.group()) + rng.choice([-1, 1]) * rng.randint(1, 9))
    return text[: m.start()] + str(value) + text[m.end():]


def _wrong(rng: random.Random, answer: str) -> str:
    """A number near ``answer`` but not it (any number when ``answer`` is not one)."""
    try:
        value = float(Fraction(answer))
    except (ValueError, ZeroDivisionError):
        return str(rng.randint(1, 99))
    return str(int(value) + rng.choice([-1, 1]) * rng.randint(1, max(2, int(abs(value) * 0.2))))


def _body(kind: str, lang: str, shown: str, answer: str) -> str:
    end = "." if lang == "en" else "。"
    if kind == "arithmetic":
        return f"{shown} = {answer}{end}"
    if kind == "equation":
        return f"x = {answer}{end}" if lang == "en" else f"解得x = {answer}{end}"
    return f"The capital of {shown} is {answer}."


def respond(task: Task, p: float, rng: random.Random) -> str:
    kind, shown, answer = task.spec["kind"], task.spec["shown"], task.spec["answer"]
    if not ok(rng, CALL_BASE + (1 - CALL_BASE) * p):  # guesses
        if kind == "fact":
            guess = answer if ok(rng, 0.4 + 0.4 * p) else other(rng, sorted(CAPITALS.values()), answer)
        else:
            guess = answer if ok(rng, 0.3 * p) else _wrong(rng, answer)
        return plugin_reply(_body(kind, task.lang, shown, guess), THOUGHTS[None], "None")
    call = task.spec["call"]
    if kind != "fact" and not ok(rng, 0.5 + p / 2):
        call = _miscopy(rng, call)
    commands = f'{TOOL_OF[kind]}("{call}")'
    results = _results(commands)
    got = results.rsplit('=> "', 1)[1].rstrip('"')
    got = got.split(":", 1)[0] if kind == "fact" else got.split("=")[-1].strip()
    if not ok(rng, 0.7 + 0.3 * p):
        got = other(rng, sorted(CAPITALS.values()), got) if kind == "fact" else _wrong(rng, got)
    return plugin_reply(_body(kind, task.lang, shown, got), THOUGHTS[kind], commands, results)


def is_tool_task(prompt: object) -> bool:
    """Whether ``prompt`` (a world prompt, or any other) is a tool-use request of the world."""
    task = getattr(prompt, "task", None)
    return isinstance(task, Task) and task.category == NAME


def answer_right(task: Task, body: str) -> bool:
    """Whether the MOSS reply ``body`` gives the task's answer."""
    answer = task.spec["answer"]
    if task.spec["kind"] == "fact":
        return answer.lower() in body.lower()
    numbers = NUMBER_RE.findall(body.replace(",", ""))
    return bool(numbers) and abs(float(numbers[-1]) - float(answer)) <= 1e-6 * max(1.0, abs(float(answer)))


def called(task: Task, reply: str) -> bool:
    """Whether ``reply`` calls the task's tool with well-formed commands only (and at least one)."""
    commands = reply_turn("", reply).commands or ""
    calls = parse_calls(commands)
    lines = [line for line in commands.splitlines() if line.strip() and line.strip() != "None"]
    return bool(calls) and len(calls) >= len(lines) and all(n == TOOL_OF[task.spec["kind"]] for n, _ in calls)


def content_score(task: Task, text: str) -> float:
    return ANSWER_WEIGHT * answer_right(task, moss_body(text)) + (1 - ANSWER_WEIGHT) * called(task, text)
