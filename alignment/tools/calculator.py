"""The MOSS calculator plugin: ``Calculate("x=1.5;y=x^2;x+y=?") => "3.75"`` (MOSS §8.2).

The expression is parsed with Python's :mod:`ast` and walked by a small evaluator; user text
is never given to ``eval`` or ``exec``. Accepted:

* numbers (int and float literals), ``+ - * / // % **``, ``^`` meaning power, unary ``+ -``,
  parentheses; ``×`` ``÷`` ``−`` are read as ``* / -``;
* statements separated by ``;``: assignments ``name = expression`` then a final expression,
  which may end in ``=?`` (or ``=``); names assigned earlier may be used later;
* the functions and constants of :data:`FUNCTIONS` and :data:`CONSTANTS` (a ``math`` whitelist).

Anything else (attributes, subscripts, strings, comparisons, other calls, keyword arguments,
comprehensions, lambdas ...) is refused. Bounds keep every input cheap: at most
:data:`MAX_LENGTH` characters, exponents at most :data:`MAX_EXPONENT` in size, integers at
most :data:`MAX_INT_DIGITS` digits, ``factorial`` up to :data:`MAX_FACTORIAL`, finite real
results only, and a wall-time limit checked at every node (each single operation is bounded
by the limits above, so none runs long).

A refused or failing input (division by zero too) gives ``No result.``; :func:`evaluate`
raises :class:`CalcError` with the reason instead.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from collections.abc import Callable

from alignment.tools.base import Tool, ToolError

MAX_LENGTH = 500
"""Longest accepted expression, in characters."""
MAX_EXPONENT = 1000
"""Largest ``|exponent|`` of ``**`` / ``^`` / ``pow``."""
MAX_INT_DIGITS = 1000
"""Largest integer (operand or result), in decimal digits."""
MAX_FACTORIAL = 170
"""Largest ``factorial`` argument (170! is the largest factorial a float can hold)."""
MAX_COMB = 1000
"""Largest ``n`` of ``comb(n, k)`` and ``perm(n, k)``."""
MAX_ROUND_DIGITS = 100
"""Largest ``|ndigits|`` of ``round(x, ndigits)``."""
TIME_LIMIT_S = 1.0
"""Wall-time limit of one evaluation, in seconds."""

_INT_LIMIT = 10**MAX_INT_DIGITS  # integers must lie strictly between -_INT_LIMIT and _INT_LIMIT
_MAX_INT_BITS = _INT_LIMIT.bit_length()

Number = int | float


class CalcError(ToolError):
    """The calculator refuses or fails on an expression; the message says why."""


def _check(value: object) -> Number:
    """``value`` if it is a finite real number within the size bounds, else :class:`CalcError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalcError(f"not a real number: {type(value).__name__}")
    if isinstance(value, int):
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise CalcError(f"integer larger than {MAX_INT_DIGITS} digits")
    elif not math.isfinite(value):
        raise CalcError("result is not finite")
    return value


def _as_int(value: Number, what: str) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise CalcError(f"{what} needs an integer")
        value = int(value)
    return value


def _power(base: Number, exponent: Number) -> Number:
    """``base ** exponent`` within the exponent and size bounds."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalcError(f"exponent larger than {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if abs(base).bit_length() * exponent > 2 * _MAX_INT_BITS:  # a cheap over-estimate; _check is exact
            raise CalcError(f"integer larger than {MAX_INT_DIGITS} digits")
    return _check(base**exponent)


def _factorial(n: Number) -> int:
    n = _as_int(n, "factorial")
    if not 0 <= n <= MAX_FACTORIAL:
        raise CalcError(f"factorial needs 0 <= n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _comb(fn: Callable[[int, int], int]) -> Callable[[Number, Number], int]:
    def bounded(n: Number, k: Number) -> int:
        n, k = _as_int(n, fn.__name__), _as_int(k, fn.__name__)
        if not 0 <= n <= MAX_COMB:
            raise CalcError(f"{fn.__name__} needs 0 <= n <= {MAX_COMB}")
        return fn(n, k)

    return bounded


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    ndigits = _as_int(ndigits, "round")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalcError(f"round needs |ndigits| <= {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,  # log(x) is the natural log; log(x, base)
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "floor": math.floor,
    "ceil": math.ceil,
    "trunc": math.trunc,
    "fabs": math.fabs,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "gcd": math.gcd,
    "pow": _power,
    "factorial": _factorial,
    "comb": _comb(math.comb),
    "perm": _comb(math.perm),
}
"""The functions an expression may call (positional arguments only)."""

CONSTANTS: dict[str, float] = {"pi": math.pi, "π": math.pi, "e": math.e, "tau": math.tau}
"""The named constants; a name assigned in the expression shadows them."""

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SPELLINGS = {"^": "**", "×": "*", "÷": "/", "−": "-"}


def drop_ask(text: str) -> str:
    """``text`` without its final ``=?`` (or ``=``) asking for the value, and the whitespace around it:
    what ``re.sub(r"\\s*=\\s*\\??\\s*$", "", text)`` gives, by stripping from the end (that regex
    backtracks quadratically on long whitespace runs; this is linear)."""
    head = text.rstrip()
    if head.endswith("?"):
        head = head[:-1].rstrip()
    return head[:-1].rstrip() if head.endswith("=") else text


class _Evaluator:
    """Walks one parsed statement over the whitelisted node types."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.names: dict[str, Number] = {}

    def value(self, node: ast.AST) -> Number:
        if time.monotonic() > self.deadline:
            raise CalcError("time limit exceeded")
        if isinstance(node, ast.Constant):
            return _check(node.value)
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise CalcError(f"unknown name {node.id!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.value(node.left), self.value(node.right)
            return _check(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _check(_UNARY[type(node.op)](self.value(node.operand)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise CalcError("only positional arguments are allowed")
            args = [self.value(a) for a in node.args]
            return _check(FUNCTIONS[node.func.id](*args))
        raise CalcError(f"not allowed: {type(node).__name__}")

    def statement(self, text: str) -> Number:
        """Run one ``;``-separated statement: an assignment or an expression; its value."""
        tree = ast.parse(text, mode="exec")
        if len(tree.body) != 1:
            raise CalcError("one statement per ';'")
        stmt = tree.body[0]
        if isinstance(stmt, ast.Expr):
            return self.value(stmt.value)
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
            if name in FUNCTIONS:
                raise CalcError(f"cannot assign to {name!r}")
            self.names[name] = self.value(stmt.value)
            return self.names[name]
        raise CalcError(f"not allowed: {type(stmt).__name__}")


def evaluate(expression: str, time_limit_s: float = TIME_LIMIT_S) -> Number:
    """The value of a MOSS calculator expression; :class:`CalcError` when refused or failing."""
    if len(expression) > MAX_LENGTH:
        raise CalcError(f"expression longer than {MAX_LENGTH} characters")
    for spelling, python in _SPELLINGS.items():
        expression = expression.replace(spelling, python)
    parts = [p.strip() for p in expression.strip().split(";")]
    while parts and not parts[-1]:
        parts.pop()
    if not parts:
        raise CalcError("empty expression")
    parts[-1] = drop_ask(parts[-1])
    evaluator = _Evaluator(time.monotonic() + time_limit_s)
    value: Number = 0
    try:
        for part in parts:
            value = evaluator.statement(part)
    except CalcError:
        raise
    except (SyntaxError, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as err:
        raise CalcError(f"{type(err).__name__}: {err}") from err
    return value


def format_number(value: Number) -> str:
    """MOSS's number style: ``770``, ``3.75``; integers without ``.0``, floats to 10 significant digits."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


class Calculator(Tool):
    """``Calculate(expression)``: the formatted value, or ``No result.`` when refused or failing."""

    name = "Calculate"

    def __init__(self, time_limit_s: float = TIME_LIMIT_S) -> None:
        self.time_limit_s = time_limit_s

    def run(self, arg: str) -> str:
        return format_number(evaluate(arg, self.time_limit_s))
