"""Reserving a placement group: refused at once when the cluster can never hold it, and, while it
waits for resources other groups hold, a line every ``WAIT_REPORT_S`` seconds saying what for."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import ray
from ray.util.placement_group import PlacementGroup, placement_group

WAIT_REPORT_S = 30.0
POLL_S = 1.0


class PlacementError(RuntimeError):
    """A placement that no node, or not the whole cluster, can ever hold."""


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items())) or "nothing"


def infeasible(bundles: Sequence[dict[str, float]], nodes: Sequence[dict[str, float]]) -> str | None:
    """Why ``bundles`` can never be placed on nodes with these total resources (a bundle larger than
    every node, or more of a resource than the cluster has), or None when they fit."""
    for key in sorted({k for b in bundles for k in b}):
        need = sum(b.get(key, 0.0) for b in bundles)
        have = sum(n.get(key, 0.0) for n in nodes)
        biggest = max((b.get(key, 0.0) for b in bundles), default=0.0)
        largest_node = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if need > have + 1e-9:
            return f"{need:g} {key} in all, and the cluster has {have:g}"
        if biggest > largest_node + 1e-9:
            return f"{biggest:g} {key} for one actor, and the largest node has {largest_node:g}"
    return None


def reserve(bundles: Sequence[dict[str, float]], what: str,
            while_waiting: Callable[[], bool] | None = None) -> PlacementGroup:
    """A ready placement group of ``bundles`` (PACK) for ``what`` (e.g. ``ray.policy: 2 actors``).
    Raises ``PlacementError`` at once when the cluster can never hold it. While it waits,
    ``while_waiting`` may free resources (it returns whether it did), and every ``WAIT_REPORT_S``
    a line says what the placement waits for and what the cluster has free."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    why = infeasible(bundles, nodes)
    if why is not None:
        raise PlacementError(f"{what}: asks for {_fmt(_total(bundles))} ({len(bundles)} bundle(s) of "
                             f"{_fmt(bundles[0]) if bundles else 'nothing'}): {why}. Lower the role's num_actors, "
                             "num_cpus or num_gpus, or give Ray more (ray.num_cpus, a bigger cluster)")
    pg = placement_group(list(bundles), strategy="PACK")
    ready, started, reported = pg.ready(), time.time(), time.time()
    while not ray.wait([ready], timeout=POLL_S)[0]:
        if while_waiting is not None and while_waiting():
            continue
        if time.time() - reported >= WAIT_REPORT_S:
            reported = time.time()
            need = _total(bundles)
            free = {k: v for k, v in ray.available_resources().items() if k in need}
            print(f"{what}: waiting {reported - started:.0f} s for {_fmt(need)}; free now: {_fmt(free)} (other "
                  "stages' actors hold the rest)", flush=True)
    return pg


def _total(bundles: Sequence[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out
