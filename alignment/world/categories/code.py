"""Code: "Write a Python function named NAME that returns the OP of a and b."

The judge parses the answer with ``ast`` and evaluates the returned expression on test inputs
with a tiny whitelist evaluator (no ``exec``), so it scores any free-form answer safely.
"""

from __future__ import annotations

import ast
import random

from alignment.world.task import Task, ok, other

NAME = "code"
OPS = {  # name: (expression, Chinese name, reference function)
    "sum": ("a + b", "和", lambda a, b: a + b),
    "difference": ("a - b", "差", lambda a, b: a - b),
    "product": ("a * b", "积", lambda a, b: a * b),
    "maximum": ("max(a, b)", "最大值", max),
    "minimum": ("min(a, b)", "最小值", min),
}
VERBS = ["get", "compute", "calc", "find"]
NOUNS = ["numbers", "values", "scores", "prices", "points", "items"]
PROMPTS = {
    "en": ["Write a Python function named {name} that returns the {op} of a and b.",
           "Please write a Python function {name}(a, b) that returns the {op} of a and b."],
    "zh": ["写一个名为{name}的Python函数，返回a和b的{op}。"],
}
TESTS = [(3, 5), (7, 2), (-1, 4), (6, 6)]
FENCE = "```"


def fenced_code(text: str) -> str | None:
    """The body of the first fenced block (```` ```python\n...``` ```` or ```` ```\n...``` ````), as
    ``re.search(r"```(?:python)?\\n(.*?)```", text, re.DOTALL)`` finds it; ``None`` when there is none.
    Each fence is looked at once and the closing fence searched for at most once: linear work."""
    at = text.find(FENCE)
    while at >= 0:
        body = at + len(FENCE)
        if text.startswith("python\n", body):
            body += len("python\n")
        elif text.startswith("\n", body):
            body += 1
        else:
            at = text.find(FENCE, at + 1)
            continue
        close = text.find(FENCE, body)
        return text[body:close] if close >= 0 else None  # no later fence can close either
    return None


def make(rng: random.Random, lang: str) -> Task:
    op = rng.choice(sorted(OPS))
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    shown = op if lang == "en" else OPS[op][1]
    prompt = rng.choice(PROMPTS[lang]).format(name=name, op=shown)
    return Task(NAME, lang, prompt, {"name": name, "op": op})


def respond(task: Task, p: float, rng: random.Random) -> str:
    name, op = task.spec["name"], task.spec["op"]
    if not ok(rng, p):
        op = other(rng, sorted(OPS), op)
    if not ok(rng, p):
        verb, noun = name.split("_", 1)
        name = f"{verb}_{other(rng, NOUNS, noun)}"
    colon = ":" if ok(rng, 0.5 + p / 2) else ""
    return f"```python\ndef {name}(a, b){colon}\n    return {OPS[op][0]}\n```"


def _eval(node: ast.AST, env: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        left, right = _eval(node.left, env), _eval(node.right, env)
        return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("max", "min"):
        args = [_eval(a, env) for a in node.args]
        if len(args) < 1 or node.keywords:
            raise ValueError("bad call")
        return max(args) if node.func.id == "max" else min(args)
    raise ValueError(f"unsupported expression {type(node).__name__}")


def content_score(task: Task, text: str) -> float:
    fenced = fenced_code(text)
    source = fenced if fenced is not None else text[text.find("def "):] if "def " in text else ""
    if not source.strip():
        return 0.0
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting: not code worth reading
        return 0.0
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not funcs:
        return 0.2
    fn = funcs[0]
    score = 0.2 + 0.2 * (fn.name == task.spec["name"])
    params = [a.arg for a in fn.args.args]
    ret = fn.body[-1] if fn.body else None
    if len(params) != 2 or not isinstance(ret, ast.Return) or ret.value is None:
        return score
    reference = OPS[task.spec["op"]][2]
    passed = 0
    for a, b in TESTS:
        try:
            passed += _eval(ret.value, {params[0]: a, params[1]: b}) == reference(a, b)
        except (ValueError, KeyError, RecursionError):
            pass
    return score + 0.6 * passed / len(TESTS)
