"""MOSS plugin tools (MOSS §8.2): run the calls of a Commands field, write its Results field.

The model writes ``<|Commands|>: Calculate("120+80+150+180+240")<eoc>``; the program runs
the calls and writes ``<|Results|>: Calculate("120+80+150+180+240") => "770"<eor>``, one line
per call. :func:`run_commands` does the part between the role prefix and the close token::

    run_commands('Calculate("x=1.5;y=x^2;x+y=?")', {"Calculate"})
    # -> 'Calculate("x=1.5;y=x^2;x+y=?") => "3.75"'

The tools, each behind :class:`~alignment.tools.base.Tool`, are registered in :data:`TOOLS`:

* ``Calculate(expression)``: :mod:`alignment.tools.calculator`, a bounded ``ast`` evaluator;
* ``Solve(equation)``: :mod:`alignment.tools.solver`, sympy in a time/memory-limited process;
* ``Search(query)``: :mod:`alignment.tools.search`, BM25 over the lab's local corpus.

Text-to-image is out of scope: there is no ``Text2Image`` tool, and its calls are ignored
like those of any unknown tool.

Rules of :func:`run_commands`:

* a call is ``Name("argument")`` (a double- or single-quoted Python string literal, so ``\\"``
  escapes work); a line holds one call, or several separated by ``,`` or ``;``; blank lines and
  ``None`` (MOSS's "no tool used") are skipped;
* calls of a disabled tool are ignored: they are not run and get no line (MOSS §8.3); so are
  calls of unknown tools and malformed lines (anything that is not a well-formed call);
* at most :data:`MAX_CALLS` calls run per turn; later ones are ignored;
* each run call gives ``Name("argument") => "result"``, argument and result written as JSON
  strings (``"`` ``\\`` and newlines escaped, and ``<`` as ``\\u003c``), so every Results line is
  one line and holds no special token;
* a tool that has no answer, refuses its input, fails or runs out of time gives ``No result.``
  (never an exception); when no call runs at all, the Results text is ``No result.``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Set

from alignment.tools.base import NO_RESULT, Tool, ToolError
from alignment.tools.calculator import Calculator
from alignment.tools.search import Search
from alignment.tools.solver import Solver

__all__ = [
    "MAX_CALLS",
    "NO_RESULT",
    "TOOLS",
    "Calculator",
    "Search",
    "Solver",
    "Tool",
    "ToolError",
    "enabled_tools",
    "format_result",
    "parse_calls",
    "run_commands",
]

TOOLS: dict[str, Tool] = {"Calculate": Calculator(), "Solve": Solver(), "Search": Search()}
"""The lab's tools by call name. The solver's worker process and the search index start on first use."""

DISPLAY_NAMES: dict[str, str] = {"Calculator": "Calculate", "Equation solver": "Solve", "Web search": "Search"}
"""The meta-instruction's name of each tool (MOSS §8.1) and its call name."""

MAX_CALLS = 8
"""The most calls run in one Commands field."""
MAX_LINE_LENGTH = 2000
"""Longer Commands lines are malformed."""

_CALL = r"""([A-Za-z_]\w*)\s*\(\s*("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')\s*\)"""
_CALL_RE = re.compile(_CALL)
_LINE_RE = re.compile(rf"\s*{_CALL}(?:\s*[,;]?\s*{_CALL})*\s*[,;]?\s*")
_SWITCH_RE = re.compile(r"^\s*-?\s*([^:]+?)\s*:\s*(enabled|disabled)\b(?:.*?\bAPI:\s*([A-Za-z_]\w*)\s*\()?", re.I)
_COMMANDS_PREFIX = "<|Commands|>:"
_COMMANDS_CLOSE = "<eoc>"


def parse_calls(text: str) -> list[tuple[str, str]]:
    """The ``(name, argument)`` calls of a Commands text, in order; malformed lines are skipped.

    ``text`` is the body of a Commands field (a leading ``<|Commands|>:`` and a trailing
    ``<eoc>`` are tolerated). Blank lines and ``None`` lines hold no call.
    """
    text = text.strip()
    if text.startswith(_COMMANDS_PREFIX):
        text = text[len(_COMMANDS_PREFIX) :]
    if text.endswith(_COMMANDS_CLOSE):
        text = text[: -len(_COMMANDS_CLOSE)]
    calls: list[tuple[str, str]] = []
    for line in text.splitlines():
        if len(line) > MAX_LINE_LENGTH or not _LINE_RE.fullmatch(line):
            continue
        for match in _CALL_RE.finditer(line):
            try:
                arg = ast.literal_eval(match.group(2))
            except (ValueError, SyntaxError):
                continue
            if isinstance(arg, str):
                calls.append((match.group(1), arg))
    return calls


def format_result(name: str, arg: str, result: str) -> str:
    """One Results line: ``Name("arg") => "result"``."""
    return f"{name}({_quote(arg)}) => {_quote(result)}"


def _quote(text: str) -> str:
    """``text`` as a JSON string with ``<`` escaped (``\\u003c``): an argument or a result cannot
    hold a special token (``<eor>``, ``<|MOSS|>:``...) that would end or re-open a field."""
    return json.dumps(text, ensure_ascii=False).replace("<", "\\u003c")


def run_commands(
    text: str, enabled: Set[str], tools: Mapping[str, Tool] | None = None, max_calls: int = MAX_CALLS
) -> str:
    """The Results text for a Commands text: one ``Name("arg") => "result"`` line per call run.

    Only calls whose name is in ``enabled`` and in ``tools`` (default :data:`TOOLS`) run; the
    others are ignored, as are malformed lines and calls beyond ``max_calls``. ``No result.``
    when no call runs.
    """
    tools = TOOLS if tools is None else tools
    lines: list[str] = []
    for name, arg in parse_calls(text):
        if len(lines) >= max_calls:
            break
        if name not in enabled or name not in tools:
            continue
        try:
            result = tools[name](arg)
        except Exception:  # a Tool never raises; a foreign callable in `tools` might
            result = NO_RESULT
        lines.append(format_result(name, arg, result))
    return "\n".join(lines) if lines else NO_RESULT


def enabled_tools(meta_instruction: str) -> frozenset[str]:
    """The call names the meta-instruction's tool switch enables, e.g. ``frozenset({"Calculate"})``.

    Reads lines like ``- Calculator: enabled. API: Calculate(expression)`` (the ``API:`` name
    wins; without one the display name is looked up in :data:`DISPLAY_NAMES`). Only tools of
    :data:`TOOLS` are returned, so an enabled ``Text2Image`` is left out.
    """
    enabled: set[str] = set()
    for line in meta_instruction.splitlines():
        match = _SWITCH_RE.match(line)
        if match is None or match.group(2).lower() != "enabled":
            continue
        name = match.group(3) or DISPLAY_NAMES.get(match.group(1).strip())
        if name in TOOLS:
            enabled.add(name)
    return frozenset(enabled)
