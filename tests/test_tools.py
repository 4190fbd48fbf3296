"""The MOSS plugin tools (MOSS §8.2): calculator, equation solver, search, and the Commands runner."""

from __future__ import annotations

import builtins
import contextlib
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignment.chat_format import ToolSwitch, meta_instruction
from alignment.tools import (
    NO_RESULT,
    TOOLS,
    enabled_tools,
    format_result,
    parse_calls,
    run_commands,
)
from alignment.tools.calculator import MAX_LENGTH, CalcError, Calculator, evaluate, format_number
from alignment.tools.search import Passage, Search, load_corpus, tokenize
from alignment.tools.solver import Solver

ALL = frozenset({"Calculate", "Solve", "Search"})

# ------------------------------------------------------------------------------ calculator --


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("x=1.5;y=x^2;x+y=?", "3.75"),
        ("120+80+150+180+240", "770"),
        ("sqrt(16)+log10(1000)", "7"),
        ("2^10", "1024"),
        ("-(3 - 5) * 4 // 3 % 5", "2"),
        ("7/2", "3.5"),
        ("1/3", "0.3333333333"),
        ("0.1+0.2", "0.3"),
        ("2 × 3 ÷ 4 = ?", "1.5"),
        ("a=2; b=a*pi; round(b, 3)", "6.283"),
        ("factorial(5)+comb(5,2)", "130"),
        ("max(3, floor(2.7), ceil(4.1))", "5"),
        ("log(8, 2) + exp(0)", "4"),
        ("10**999", "1" + "0" * 999),  # the largest power of ten within MAX_INT_DIGITS
        ("-" * 99 + "1", "-1"),
    ],
)
def test_calculator_values(expression: str, expected: str) -> None:
    assert Calculator()(expression) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "1/0",
        "5 % 0",
        "__import__('os')",
        "__import__('os').system('true')",
        "(1).real",
        "pi.real",
        "[1, 2][0]",
        "'a' * 3",
        "x",  # an unknown name
        "open('/etc/passwd')",  # a call to a name outside the whitelist
        "sqrt(x=4)",
        "[i for i in (1, 2)]",
        "lambda: 1",
        "1 < 2",
        "True + 1",
        "1j * 1j",
        "(-8) ** (1/3)",  # complex
        "9**9**9",
        "2**1001",
        "10**1000",  # 1001 digits
        "10**999 * 10",
        "1e308 * 10",
        "exp(1000)",
        "factorial(100000)",
        "factorial(2.5)",
        "comb(100000, 50000)",
        "round(1, -1000000000)",
        "sqrt = 4; sqrt",
        "1 +",
        "",
        "1" * 10_000,
        "(" * 300 + "1" + ")" * 300,
        "1" * (MAX_LENGTH + 1),
        "().__class__",  # dunder access and attribute / subscript chains
        "().__class__.__bases__[0].__subclasses__()",
        "(1).__class__.__mro__[-1]",
        "__import__('os').system('id')",
        "getattr(1, 'real')",
        "globals()",
        "eval('1+1')",
        "(lambda: 1)()",
        "{1: 2}[1]",
        "{x for x in (1, 2)}",
        "ｅｖａｌ('1')",  # a fullwidth name, which Python normalises to eval
        "__ｉｍｐｏｒｔ__('os')",
        "１+１",  # fullwidth digits
        "\u202e1+1",  # a right-to-left override
        "1" + "+1" * 50_000,  # 100 kB
        "(" * 10_000 + "1" + ")" * 10_000,  # deep nesting
    ],
)
def test_calculator_refuses_fast_without_raising(expression: str) -> None:
    start = time.monotonic()
    assert Calculator()(expression) == NO_RESULT
    with pytest.raises(CalcError):
        evaluate(expression)
    assert time.monotonic() - start < 1.0


def test_calculator_does_not_use_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert Calculator()("x=1.5;y=x^2;x+y=?") == "3.75"


def test_calculator_time_limit() -> None:
    # the per-evaluation deadline is checked at every node: a limit already passed refuses
    with pytest.raises(CalcError, match="time limit"):
        evaluate("1+1", time_limit_s=-1.0)


@pytest.mark.parametrize(
    "value, text", [(770, "770"), (3.75, "3.75"), (7.0, "7"), (-0.0, "0"), (1 / 3, "0.3333333333"), (1e20, "1e+20")]
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


# ---------------------------------------------------------------------------------- solver --


@pytest.fixture(scope="module")
def solver():
    tool = Solver(timeout_s=30.0)  # generous: the machine running the suite may be busy
    yield tool
    tool.close()


@pytest.fixture(scope="module")
def quick_solver():
    """A solver with a short time limit, for inputs that would run for minutes."""
    tool = Solver(timeout_s=1.0)
    yield tool
    tool.close()


@pytest.mark.parametrize(
    "equation, expected",
    [
        ("x^2-4=0", "x = -2 or x = 2"),
        ("x^2-4", "x = -2 or x = 2"),  # an expression means "= 0"
        ("2x+1=7", "x = 3"),
        ("1.5*x=3", "x = 2"),
        ("x^2=2", "x = -sqrt(2) or x = sqrt(2)"),
        ("x+y=3;x-y=1", "x = 2, y = 1"),
        ("x+y=3, x-y=1", "x = 2, y = 1"),
        ("a+b+c=6; a-b=0; c=2a", "a = 3/2, b = 3/2, c = 3"),
        ("log(x, 2) = 3", "x = 8"),
    ],
)
def test_solver_solutions(solver: Solver, equation: str, expected: str) -> None:
    assert solver(equation) == expected


@pytest.mark.parametrize(
    "equation",
    [
        "x+1=x+2",  # no solution
        "x+y=1; x+y=2",  # an inconsistent system
        "2=2",  # no unknown
        "x = = 1",
        "x.is_real=1",  # attribute access
        "__import__('os')",
        "f(x)=1",  # an undefined function
        "x" * 400,  # too long
        "__import__('os').system('id')=1",
        "().__class__.__bases__[0]=x",
        "x.__class__.__mro__=1",
        "(lambda y: y)(x)=1",
        "ｅｖａｌ('1')=x",  # normalised to eval: not in the namespace
        "x" + "+x" * 50_000 + "=1",  # 100 kB
        "(" * 5_000 + "x" + ")" * 5_000 + "=1",
    ],
)
def test_solver_no_result(solver: Solver, equation: str) -> None:
    assert solver(equation) == NO_RESULT


@pytest.mark.parametrize("equation", ["x**(10**10)=1", "x^100000+x+1=0"])
def test_solver_pathological_input_times_out(quick_solver: Solver, equation: str) -> None:
    assert quick_solver("x=1") == "x = 1"  # the worker is up: the timing below is the solve alone
    start = time.monotonic()
    assert quick_solver(equation) == NO_RESULT
    assert time.monotonic() - start < 6.0  # the limit is 1 s; a hang would take minutes
    assert quick_solver("x-5=0") == "x = 5"  # a fresh worker answers the next call


def test_solver_memory_limit_applies_in_the_worker() -> None:
    # sympy alone needs more than 32 MiB of address space: the worker fails, the caller does not
    tool = Solver(memory_mb=32)
    assert tool("x=1") == NO_RESULT
    assert tool.worker_pid is None


def _wait_until(condition, timeout_s: float) -> bool:
    """Poll ``condition`` (a state change in another process) until it holds or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.005)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the worker's state from /proc")
def test_solver_worker_crash_mid_solve_is_survived() -> None:
    tool = Solver(timeout_s=120.0)
    try:
        assert tool("x=1") == "x = 1"
        pid = tool.worker_pid
        assert pid is not None
        results: list[str] = []
        caller = threading.Thread(target=lambda: results.append(tool("x^100000+x+1=0")))
        start = time.monotonic()
        caller.start()

        def computing() -> bool:  # state R: the worker has read the request and is solving it
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R"

        assert _wait_until(computing, 30.0)
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-solve
        caller.join(30.0)
        assert results == [NO_RESULT]
        assert time.monotonic() - start < 60.0  # well before the 120 s limit
        assert tool("x^2=9") == "x = -3 or x = 3"  # and a new worker takes over
        assert tool.worker_pid not in (None, pid)
    finally:
        tool.close()


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads the worker's limits from /proc")
def test_solver_worker_has_a_cpu_limit_per_request(solver: Solver) -> None:
    assert solver("x=5") == "x = 5"
    pid = solver.worker_pid
    assert pid is not None
    [line] = [ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines() if ln.startswith("Max cpu time")]
    soft = line.split()[3]
    assert soft != "unlimited"
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    assert used < int(soft) <= int(used) + math.ceil(solver.timeout_s) + 1 + 1  # (+1: a second's rounding)


ORPHAN = """
import os, subprocess, sys
code = ("import os, sys, threading; from alignment.tools.solver import die_with_parent; "
        "assert die_with_parent(int(sys.argv[1])); print(os.getpid(), flush=True); threading.Event().wait()")
subprocess.Popen([sys.executable, "-c", code, str(os.getpid())]).wait()
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or not sys.platform.startswith("linux"),
                    reason="PR_SET_PDEATHSIG and pidfd are Linux's")
def test_solver_worker_dies_with_its_parent(solver: Solver) -> None:
    assert solver("x=3") == "x = 3"
    cmdline = Path(f"/proc/{solver.worker_pid}/cmdline").read_text()
    assert f", {os.getpid()})" in cmdline  # the worker is told its parent, to die with it

    # A process that calls die_with_parent as the worker does, under a parent that is then killed.
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, env=env, text=True)
    line = parent.stdout.readline()
    pid = int(line)
    try:
        child = os.pidfd_open(pid)
        parent.kill()
        parent.wait()
        assert select.select([child], [], [], 30.0)[0], "the orphan kept running"
        os.close(child)
    finally:
        parent.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_solver_worker_killed_between_calls(solver: Solver) -> None:
    assert solver("x=2") == "x = 2"
    pid = solver.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # dead and reaped
    assert solver("3x=2") == "x = 2/3"
    assert solver.worker_pid not in (None, pid)


# ---------------------------------------------------------------------------------- search --


def test_corpus_is_shipped_and_well_formed() -> None:
    passages = load_corpus()
    assert 60 <= len(passages) <= 150
    assert len({p.title for p in passages}) == len(passages)
    assert all(p.title and p.text and "\n" not in p.text for p in passages)
    assert any("\u4e00" <= ch <= "\u9fff" for p in passages for ch in p.text)  # some Chinese


@pytest.mark.parametrize(
    "query, title",
    [
        ("capital of France", "Paris"),
        ("What is the highest mountain?", "Mount Everest"),
        ("who invented the telephone", "Telephone"),
        ("boiling point of water", "Water"),
        ("how many metres in a mile", "Mile"),
        ("中国的首都是哪里", "北京"),
        ("熊猫吃什么", "熊猫"),
    ],
)
def test_search_returns_the_passage_first(query: str, title: str) -> None:
    result = TOOLS["Search"](query)
    assert result.startswith(f"{title}: ")
    assert "\n" not in result
    assert 1 <= len(result.split(" | ")) <= 3


@pytest.mark.parametrize("query", ["xyzzy plugh frobnicate", "what is the", "", "!!!"])
def test_search_no_result(query: str) -> None:
    assert TOOLS["Search"](query) == NO_RESULT


def test_search_own_corpus_and_top_k() -> None:
    passages = [Passage(f"P{i}", f"apple number {i}") for i in range(5)] + [Passage("Pear", "a pear")]
    search = Search(passages, top_k=2)
    assert len(search("apple").split(" | ")) == 2
    assert search("pear") == "Pear: a pear"


def test_tokenize() -> None:
    assert tokenize("What is the Boiling point of rivers?") == ["boil", "point", "river"]
    assert tokenize("长江") == ["长", "江", "长江"]


# ---------------------------------------------------------------------------- run_commands --


def test_run_commands_one_line_per_call_in_order() -> None:
    commands = ' Calculate("x=1.5;y=x^2;x+y=?")\nSolve("x^2-4=0")\nSearch("capital of France")\nCalculate("1/0") '
    lines = run_commands(commands, ALL).split("\n")
    assert lines[0] == 'Calculate("x=1.5;y=x^2;x+y=?") => "3.75"'
    assert lines[1] == 'Solve("x^2-4=0") => "x = -2 or x = 2"'
    assert lines[2].startswith('Search("capital of France") => "Paris: Paris is the capital')
    assert lines[3] == 'Calculate("1/0") => "No result."'
    assert len(lines) == 4


def test_run_commands_ignores_disabled_unknown_and_malformed() -> None:
    commands = "\n".join(
        [
            'Search("capital of France")',  # disabled
            'Text2Image("a cat")',  # out of scope: unknown
            "Calculate(1+1)",  # no quotes: malformed
            'Calculate("1+1"',  # malformed
            "let me think",  # malformed
            'Calculate("120+80+150+180+240")',
        ]
    )
    assert run_commands(commands, {"Calculate"}) == 'Calculate("120+80+150+180+240") => "770"'
    assert run_commands(commands, {"Text2Image"}) == NO_RESULT


@pytest.mark.parametrize("commands", ["None", " None \n", "", "\n\n", 'Search("capital of France")'])
def test_run_commands_no_call_run(commands: str) -> None:
    assert run_commands(commands, {"Calculate"}) == NO_RESULT


def test_run_commands_tool_errors_never_raise() -> None:
    class Broken:
        def __call__(self, arg: str) -> str:
            raise RuntimeError("boom")

    assert run_commands('Boom("x")', {"Boom"}, tools={"Boom": Broken()}) == 'Boom("x") => "No result."'


def test_run_commands_caps_the_number_of_calls() -> None:
    commands = "\n".join(f'Calculate("{i}+1")' for i in range(20))
    lines = run_commands(commands, {"Calculate"}, max_calls=3).split("\n")
    assert lines == [f'Calculate("{i}+1") => "{i + 1}"' for i in range(3)]


def test_parse_calls_quotes_and_layouts() -> None:
    text = '<|Commands|>: Search("the \\"Eiffel\\" tower"), Calculate(\'2+2\'); Solve("x=1")\nNone\nfoo("a", "b")<eoc>'
    assert parse_calls(text) == [("Search", 'the "Eiffel" tower'), ("Calculate", "2+2"), ("Solve", "x=1")]


def test_results_lines_escape_quotes_and_newlines() -> None:
    line = format_result("Search", 'a "b"', "one\ntwo")
    assert line == 'Search("a \\"b\\"") => "one\\ntwo"'
    assert "\n" not in line
    assert parse_calls(line.split(" => ")[0]) == [("Search", 'a "b"')]


def test_enabled_tools_from_the_meta_instruction() -> None:
    meta = (
        "Capabilities and tools that MOSS can possess.\n"
        "- Inner thoughts: enabled.\n"
        "- Web search: disabled.\n"
        "- Calculator: enabled. API: Calculate(expression)\n"
        "- Equation solver: disabled.\n"
        "- Text-to-image: enabled. API: Text2Image(description)\n"
    )
    assert enabled_tools(meta) == frozenset({"Calculate"})
    switch = ToolSwitch(enabled=frozenset({"Web search", "Equation solver", "Text-to-image"}))
    assert enabled_tools(meta_instruction(switch)) == frozenset({"Search", "Solve"})
    assert enabled_tools(meta_instruction(None)) == frozenset()
