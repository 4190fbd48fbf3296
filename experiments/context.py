"""What a driver gets: the typed config, its run dir, the artifact cache and the tracker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from actors.group import RoleGroup
from alignment.world import World, WorldSpec
from experiments.cache import Artifact, ArtifactCache, config_key, reuse
from experiments.config import ActorResources, LabConfig, WorldConfig
from experiments.costs import Ledger
from experiments.tracking import Tracker


def make_world(cfg: WorldConfig) -> World:
    return World(WorldSpec(seed=cfg.seed, category_weights=cfg.category_weights, zh_share=cfg.zh_share,
                           turn_weights=tuple(cfg.turn_weights), val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction))


@dataclass
class RunContext:
    cfg: LabConfig
    run_dir: Path
    cache: ArtifactCache
    tracker: Tracker
    run_tag: str
    started: float = field(default_factory=time.time)
    costs: Ledger = field(init=False)
    # torch threads per actor for a stage, set while the run is going (``widen``), and the live groups
    threads: dict[str, int] = field(default_factory=dict)
    nice: dict[str, int] = field(default_factory=dict)  # OS priority (Linux nice) of a stage's actors
    _groups: dict[str, list[RoleGroup]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.costs = Ledger(self.run_dir, self.started)

    def stage(self, name: str, key: str, what: str, build: Callable[[], Artifact]) -> Artifact:
        """Stage ``name``'s artifact with ``key``: reused from the cache (its cost as recorded when it
        was made), or made now by ``build`` inside a cost span whose totals are saved beside it."""
        hit = reuse(self.cache, name, key, what) if self.cfg.use_cache else None
        if hit is not None:
            self.costs.reused(name, hit.path)
            return hit
        with self.costs.span(name) as span:
            art = build()
            span.artifact = art.path
        return art

    def group(self, actor_cls: type, role: str, res: ActorResources, num_threads: int, stage: str,
              **kwargs: Any) -> RoleGroup:
        """An actor group for ``stage``, named ``<run>/<stage>/<role>-<rank>``; its usage joins the
        stage's cost when it shuts down."""
        with self._lock:
            num_threads = self.threads.get(stage, num_threads)
        group = RoleGroup(actor_cls, role, res, num_threads, run_tag=f"{self.run_tag}/{stage}",
                          on_shutdown=self.costs.recorder(stage), nice=self.nice.get(stage, 0), **kwargs)
        with self._lock:
            self._groups[stage] = [g for g in self._groups.get(stage, []) if g.actors] + [group]
            if self.threads.get(stage, num_threads) != num_threads:  # widened while the actors started
                group.set_threads(self.threads[stage])
        return group

    def widen(self, stage: str, num_threads: int) -> None:
        """Give ``stage``'s live actors, and those it starts later, ``num_threads`` torch threads each
        (``compare`` does this when one method finishes and leaves its cores to the other)."""
        with self._lock:
            self.threads[stage] = num_threads
            for group in self._groups.get(stage, []):
                group.set_threads(num_threads)

    @cached_property
    def world(self) -> World:
        return make_world(self.cfg.data.world)

    def cache_key(self, stage: str, payload: dict) -> str:
        return config_key(stage, payload)
