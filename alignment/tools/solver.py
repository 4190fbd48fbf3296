"""The MOSS equation-solver plugin: ``Solve("x^2-4=0") => "x = -2 or x = 2"`` (MOSS §8.2).

The argument is one equation (``x^2-4=0``; an expression without ``=`` means ``= 0``) or a
system separated by ``;`` or top-level ``,`` (``x+y=3;x-y=1``). Every free symbol is an
unknown. It is parsed by sympy's ``parse_expr`` over a restricted namespace (symbols, numbers
and the functions of :data:`FUNCTIONS`; ``^`` is power, ``2x`` is ``2*x``, decimals are read
as exact rationals) and solved by ``sympy.solve``.

Results: ``x = -2 or x = 2`` for one unknown, ``x = 2, y = 1`` for a system (several solutions
joined by `` or ``), unknowns in name order, values in sympy's exact notation (``sqrt(2)``,
``3/2``, ``I``). ``No result.`` when there is no solution, no unknown, the input is refused,
or the solve fails, runs out of time or memory, or its answer is longer than
:data:`MAX_RESULT_LENGTH`.

sympy runs in a separate worker process (``python -c``, so nothing of the caller's ``__main__``
is re-imported) under an address-space limit (``RLIMIT_AS``) and a CPU-time limit (``RLIMIT_CPU``,
raised before each request to the time used so far plus ``ceil(timeout_s) + 1`` seconds, so a solve
that the caller gave up on cannot burn CPU on its own). On Linux the worker also asks for SIGKILL
when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so an orphan never outlives its caller; the
caller waits at most
``timeout_s`` for each answer: a worker that overruns is killed, one that crashes is noticed,
and either is restarted on the next call. No input can hang or crash the caller. The worker is
started on first use and kept for later calls; the first call also waits for sympy's import
(``startup_timeout_s``).
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from alignment.tools.base import NO_RESULT, Tool, ToolError

MAX_LENGTH = 300
"""Longest accepted input, in characters."""
MAX_RESULT_LENGTH = 1000
"""Longest answer returned; a longer one gives ``No result.``"""
TIMEOUT_S = 5.0
"""Default wall-time limit of one solve, in seconds."""
MEMORY_MB = 1024
"""Default address-space limit of the worker process, in MiB."""
STARTUP_TIMEOUT_S = 60.0
"""Default wait for a new worker to import sympy, in seconds."""

FUNCTIONS: dict[str, str] = {
    "sqrt": "sqrt", "exp": "exp", "log": "log", "ln": "log",
    "sin": "sin", "cos": "cos", "tan": "tan", "asin": "asin", "acos": "acos", "atan": "atan",
    "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "abs": "Abs", "Abs": "Abs",
    "pi": "pi", "e": "E", "E": "E",
}  # fmt: skip
"""The names that are not unknowns, and the sympy object each stands for: functions (``log`` is
natural, ``log(x, b)`` has base ``b``) and the constants ``pi`` and ``e``."""

_ALLOWED = re.compile(r"[A-Za-z0-9\s+\-*/^().,;=]*")
_ATTRIBUTE = re.compile(r"\.\s*[A-Za-z]")
_SPELLINGS = {"×": "*", "÷": "/", "−": "-", "²": "^2", "³": "^3", "π": "pi"}


# ---------------------------------------------------------------- the worker side (sympy) --


def _split_top_level(text: str) -> list[str]:
    """``text`` cut at ``;`` and at ``,`` outside parentheses (``log(x, 2)`` stays whole)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ";" or (ch == "," and depth == 0):
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def solve_text(text: str) -> str:
    """Solve ``text`` with sympy in this process, without limits (the worker calls this).

    Returns the formatted solutions or ``No result.``; raises on inputs sympy cannot read.
    """
    import sympy
    from sympy.core.function import AppliedUndef
    from sympy.parsing.sympy_parser import (
        auto_number,
        auto_symbol,
        convert_xor,
        implicit_multiplication,
        parse_expr,
        rationalize,
    )

    namespace = {name: getattr(sympy, target) for name, target in FUNCTIONS.items()}
    builders = {"__builtins__": {}, "Symbol": sympy.Symbol, "Integer": sympy.Integer,
                "Float": sympy.Float, "Rational": sympy.Rational}  # fmt: skip
    transformations = (auto_symbol, auto_number, rationalize, convert_xor, implicit_multiplication)

    def parse(side: str) -> sympy.Expr:
        expr = parse_expr(side, local_dict=dict(namespace), global_dict=dict(builders), transformations=transformations)
        if not isinstance(expr, sympy.Expr) or expr.atoms(AppliedUndef):
            raise ValueError(f"not an expression: {side!r}")
        return expr

    equations = []
    for part in _split_top_level(text.replace("==", "=")):
        sides = part.split("=")
        if len(sides) > 2 or not all(s.strip() for s in sides):
            raise ValueError(f"not an equation: {part!r}")
        equations.append(parse(sides[0]) - (parse(sides[1]) if len(sides) == 2 else 0))
    unknowns = sorted(set().union(*(eq.free_symbols for eq in equations)), key=str) if equations else []
    if not unknowns:
        return NO_RESULT
    solutions = sympy.solve(equations, unknowns, dict=True)
    answers = [", ".join(f"{s} = {sympy.sstr(sol[s])}" for s in unknowns if s in sol) for sol in solutions]
    answer = " or ".join(a for a in answers if a)
    return answer if answer and len(answer) <= MAX_RESULT_LENGTH else NO_RESULT


PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal this process gets when its parent dies."""


def die_with_parent(parent_pid: int) -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; exits at once if the parent is already
    gone. ``False`` where ``prctl`` is not available (not Linux): nothing is set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os._exit(1)
    return True


def _limit_cpu(seconds: int) -> None:
    """Let the process use at most ``seconds`` more CPU time (then SIGXCPU ends it)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime) + seconds
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve(memory_bytes: int, cpu_s: int = 60, parent_pid: int | None = None) -> None:
    """The worker's loop: limit memory, die with the parent, import sympy, say ``ready``, then read one JSON
    string per line and answer each (within ``cpu_s`` more seconds of CPU) with one JSON line
    ``{"answer": ..., "quit": ...}``."""
    import resource

    if parent_pid is not None:
        die_with_parent(parent_pid)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _limit_cpu(max(cpu_s, 60))  # sympy's import
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything sympy prints goes to stderr, never into the replies
    import sympy  # noqa: F401  (imported before "ready" so that requests are timed without it)

    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        out_of_memory = False
        _limit_cpu(cpu_s)
        try:
            answer = solve_text(json.loads(line))
        except MemoryError:
            answer, out_of_memory = NO_RESULT, True
        except Exception:
            answer = NO_RESULT
        # after running out of memory the worker quits and says so: the caller starts a fresh one
        replies.write(json.dumps({"answer": answer, "quit": out_of_memory}) + "\n")
        replies.flush()
        if out_of_memory:
            return


# ---------------------------------------------------------------- the caller side --------


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


class _Worker:
    """One sympy worker process, started on demand and replaced when it dies or overruns."""

    def __init__(self, memory_bytes: int, startup_timeout_s: float, cpu_s: int = 60) -> None:
        self.memory_bytes = memory_bytes
        self.cpu_s = cpu_s
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self._owner_pid = 0
        self._finalizer: weakref.finalize | None = None

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds the alignment package
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        code = f"from alignment.tools.solver import _serve; _serve({self.memory_bytes}, {self.cpu_s}, {os.getpid()})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._owner_pid = os.getpid()
        self._finalizer = weakref.finalize(self, _stop, self.proc)
        if self._read_line(self.startup_timeout_s) != "ready":
            self.stop()
            raise ToolError("the solver worker did not start")

    def stop(self) -> None:
        """Kill the worker process (a new one starts on the next request)."""
        if self._finalizer is not None:
            self._finalizer()
        self.proc, self._finalizer = None, None

    def _read_line(self, timeout_s: float) -> str | None:
        """The worker's next reply line, or ``None`` on timeout or end of output."""
        assert self.proc is not None and self.proc.stdout is not None
        fd, data = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout_s
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            data += chunk
        return data.decode("utf-8").strip()

    def ask(self, text: str, timeout_s: float) -> str:
        """The worker's answer for ``text``; :class:`ToolError` on timeout or crash (the worker is killed)."""
        if self.proc is not None and self._owner_pid != os.getpid():  # a forked copy: the worker is the parent's
            self.proc, self._finalizer = None, None
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(text) + "\n").encode("utf-8"))
            reply = self._read_line(timeout_s)
        except OSError:  # a broken pipe: the worker died
            reply = None
        if reply is None:
            self.stop()
            raise ToolError("the solver timed out or crashed")
        message = json.loads(reply)
        if message["quit"]:
            self.stop()
        return message["answer"]


class Solver(Tool):
    """``Solve(equation)``: solutions found by sympy in a time- and memory-limited worker process."""

    name = "Solve"

    def __init__(
        self, timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB, startup_timeout_s: float = STARTUP_TIMEOUT_S
    ) -> None:
        self.timeout_s = timeout_s
        self._worker = _Worker(memory_mb * 2**20, startup_timeout_s, cpu_s=math.ceil(timeout_s) + 1)
        self._lock = threading.Lock()

    def run(self, arg: str) -> str:
        for spelling, plain in _SPELLINGS.items():
            arg = arg.replace(spelling, plain)
        if len(arg) > MAX_LENGTH or not _ALLOWED.fullmatch(arg) or _ATTRIBUTE.search(arg):
            raise ToolError("input refused")
        with self._lock:
            return self._worker.ask(arg, self.timeout_s)

    @property
    def worker_pid(self) -> int | None:
        """The process id of the running worker, if any."""
        proc = self._worker.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def close(self) -> None:
        """Stop the worker process; the next call starts a new one."""
        with self._lock:
            self._worker.stop()
