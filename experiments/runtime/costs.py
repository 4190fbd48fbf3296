"""What each stage of a run cost, and when it ran: the run's cost ledger.

A stage runs inside ``ledger.span(name)``. The actor groups it starts report their usage when
they shut down (``RoleGroup(on_shutdown=ledger.recorder(name))``): CPU seconds, peak memory,
tokens sampled, parameter updates. When the span closes its totals go to ``timing.jsonl`` in
the run dir (one line per span, with start and end times, so concurrent stages show as
overlapping spans) and, for a stage that made an artifact, to ``cost.json`` beside it, so a
later run that reuses the artifact still knows what it cost.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.atomic import write_json

COST_FILE = "cost.json"
TIMING_FILE = "timing.jsonl"
SUMMED = ("cpu_s", "tokens_generated", "param_updates")


@dataclass
class Span:
    name: str
    start: float
    end: float | None = None
    driver_cpu_s: float = 0.0
    groups: list[dict[str, float]] = field(default_factory=list)
    artifact: Path | None = None  # set by the stage: the span's totals are saved beside it

    def totals(self) -> dict[str, float]:
        """Wall and CPU seconds (actors + this driver thread), peak memory, tokens, updates."""
        end = self.end if self.end is not None else time.time()
        out = {"wall_s": end - self.start, "cpu_s": self.driver_cpu_s}
        for key in SUMMED:
            out[key] = out.get(key, 0.0) + sum(g[key] for g in self.groups)
        out["peak_rss_mb"] = peak_concurrent(self.groups, "peak_rss_mb")
        out["gpu_peak_mb"] = peak_concurrent(self.groups, "gpu_peak_mb")
        return out


def peak_concurrent(groups: list[dict[str, float]], key: str) -> float:
    """The largest sum of ``key`` over groups alive at the same moment (each group's peak counts
    for its whole life, so this bounds the stage's footprint from above)."""
    best = 0.0
    for g in groups:
        alive = [h for h in groups if h["started"] <= g["started"] < h["ended"] or h is g]
        best = max(best, sum(h[key] for h in alive))
    return best


class Ledger:
    """Spans and their costs for one run; thread-safe (``+experiment=compare`` runs stages in threads)."""

    def __init__(self, run_dir: Path | None, origin: float):
        self.run_dir, self.origin = run_dir, origin
        self.spans: list[Span] = []
        self.cached: dict[str, dict[str, Any]] = {}
        self._open: dict[str, Span] = {}
        self._lock = threading.Lock()

    @contextmanager
    def span(self, name: str) -> Iterator[Span]:
        """Time a stage; groups recorded under ``name`` while it is open count towards it."""
        s = Span(name, time.time())
        cpu0 = time.thread_time()
        with self._lock:
            self._open[name] = s
        try:
            yield s
        finally:
            s.driver_cpu_s = time.thread_time() - cpu0
            s.end = time.time()
            with self._lock:
                self._open.pop(name, None)
                self.spans.append(s)
            totals = s.totals()
            if s.artifact is not None and s.artifact.is_dir():
                write_json(s.artifact / COST_FILE, totals)
            if self.run_dir is not None:
                row = {"span": name, "start_s": s.start - self.origin, "end_s": s.end - self.origin, **totals}
                with self._lock, open(self.run_dir / TIMING_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

    def recorder(self, name: str) -> Callable[[dict[str, float]], None]:
        """A ``RoleGroup(on_shutdown=...)`` callback adding the group's usage to span ``name``."""

        def record(usage: dict[str, float]) -> None:
            with self._lock:
                s = self._open.get(name)
                if s is None:  # a group outside any span still counts, as a span of its own
                    s = Span(name, usage["started"], usage["ended"])
                    self.spans.append(s)
                s.groups.append(usage)

        return record

    def reused(self, name: str, artifact: Path) -> None:
        """Note that stage ``name`` came from the cache, with what it cost when it was made."""
        path = artifact / COST_FILE
        with self._lock:
            self.cached[name] = json.loads(path.read_text()) if path.is_file() else {}

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{stage: totals | {"cached": bool}}``: spans that ran now, plus reused artifacts at
        the cost they had when they were made. Spans of the same name add up."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            spans, cached = list(self.spans), dict(self.cached)
        for s in spans:
            t = s.totals()
            if s.name in out:
                prev = out[s.name]
                t = {k: (max(prev[k], v) if k.endswith("_mb") else prev[k] + v) for k, v in t.items()
                     if k in prev} | {"start_s": prev["start_s"]}
            else:
                t["start_s"] = s.start - self.origin
            t["end_s"] = (s.end or time.time()) - self.origin
            out[s.name] = t | {"cached": False}
        for name, cost in cached.items():
            if name not in out:
                out[name] = dict(cost) | {"cached": True}
        return out
