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
    "scan_line",
    "scan_switch",
]

TOOLS: dict[str, Tool] = {"Calculate": Calculator(), "Solve": Solver(), "Search": Search()}
"""The lab's tools by call name. The solver's worker process and the search index start on first use."""

DISPLAY_NAMES: dict[str, str] = {"Calculator": "Calculate", "Equation solver": "Solve", "Web search": "Search"}
"""The meta-instruction's name of each tool (MOSS §8.1) and its call name."""

MAX_CALLS = 8
"""The most calls run in one Commands field."""
MAX_LINE_LENGTH = 2000
"""Longer Commands lines are malformed."""

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
        if len(line) > MAX_LINE_LENGTH:
            continue
        for name, literal in scan_line(line) or ():
            try:
                arg = ast.literal_eval(literal)
            except (ValueError, SyntaxError):
                continue
            if isinstance(arg, str):
                calls.append((name, arg))
    return calls


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _skip_space(line: str, i: int) -> int:
    while i < len(line) and line[i].isspace():
        i += 1
    return i


def _scan_call(line: str, i: int) -> tuple[str, str, int] | None:
    """The call ``Name("argument")`` at ``line[i:]``: ``(name, quoted literal, end)``; ``None`` if there is none.

    One pass, each character looked at once: ``[A-Za-z_]\\w*``, ``(``, a quoted string whose backslash
    escapes any character but a newline, ``)``, with whitespace allowed around the parentheses.
    """
    n = len(line)
    if i >= n or not (line[i].isascii() and (line[i].isalpha() or line[i] == "_")):
        return None
    start = i
    while i < n and _is_word(line[i]):
        i += 1
    name = line[start:i]
    i = _skip_space(line, i)
    if i >= n or line[i] != "(":
        return None
    i = _skip_space(line, i + 1)
    if i >= n or line[i] not in "\"'":
        return None
    quote, lit_start = line[i], i
    i += 1
    while True:
        if i >= n or line[i] == "\n":
            return None
        if line[i] == quote:
            break
        if line[i] == "\\":
            if i + 1 >= n or line[i + 1] == "\n":
                return None
            i += 1
        i += 1
    literal = line[lit_start : i + 1]
    i = _skip_space(line, i + 1)
    if i >= n or line[i] != ")":
        return None
    return name, literal, i + 1


def scan_line(line: str) -> list[tuple[str, str]] | None:
    """The ``(name, quoted literal)`` calls of one Commands line, or ``None`` when the line is malformed.

    A well-formed line is whitespace, one call, then calls each after an optional ``,`` or ``;``,
    and an optional trailing ``,`` or ``;``. The scan moves forward only (no backtracking), so its
    work is linear in the line's length whatever the line holds.
    """
    calls: list[tuple[str, str]] = []
    i = _skip_space(line, 0)
    while True:
        found = _scan_call(line, i)
        if found is None:
            return None
        name, literal, i = found
        calls.append((name, literal))
        i = _skip_space(line, i)
        if i < len(line) and line[i] in ",;":
            i = _skip_space(line, i + 1)
        if i == len(line):
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
        if len(line) > MAX_LINE_LENGTH:
            continue
        switch = scan_switch(line)
        if switch is None or not switch[1]:
            continue
        display, _, api = switch
        name = api or DISPLAY_NAMES.get(display)
        if name in TOOLS:
            enabled.add(name)
    return frozenset(enabled)


def scan_switch(line: str) -> tuple[str, bool, str | None] | None:
    """``(display name, enabled, API call name or None)`` of a tool-switch line such as
    ``- Calculator: enabled. API: Calculate(expression)``; ``None`` when the line is not one.

    The display name is the text before the first ``:`` (after an optional ``-``); ``enabled`` or
    ``disabled`` (any case, a whole word) follows; the API name is the identifier after the first
    ``API:`` (any case, a whole word) that is followed by ``(``. Each scan moves forward only, so the
    work is linear in the line's length.
    """
    text = line.strip()
    if text.startswith("-"):
        text = text[1:]
    colon = text.find(":")
    if colon < 0:
        return None
    display = text[:colon].strip()
    if not display:
        return None
    rest = text[colon + 1 :].lstrip()
    word = rest[:8].lower()
    for state in ("enabled", "disabled"):
        if word.startswith(state) and (len(rest) == len(state) or not _is_word(rest[len(state)])):
            break
    else:
        return None
    return display, state == "enabled", _api_name(rest[len(state) :])


def _api_name(text: str) -> str | None:
    """The identifier after the first whole-word ``API:`` of ``text`` that is followed by ``(``."""
    i = text.find(":")
    while i >= 0:
        if i >= 3 and text[i - 3 : i].lower() == "api" and (i == 3 or not _is_word(text[i - 4])):
            j = _skip_space(text, i + 1)
            start = j
            if j < len(text) and text[j].isascii() and (text[j].isalpha() or text[j] == "_"):
                while j < len(text) and _is_word(text[j]):
                    j += 1
                name = text[start:j]
                if _skip_space(text, j) < len(text) and text[_skip_space(text, j)] == "(":
                    return name
        i = text.find(":", i + 1)
    return None
