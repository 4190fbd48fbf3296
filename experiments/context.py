"""What a driver gets: the typed config, its run dir, the artifact cache and the tracker."""

from __future__ import annotations

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
        return RoleGroup(actor_cls, role, res, num_threads, run_tag=f"{self.run_tag}/{stage}",
                         on_shutdown=self.costs.recorder(stage), **kwargs)

    @cached_property
    def world(self) -> World:
        return make_world(self.cfg.data.world)

    def cache_key(self, stage: str, payload: dict) -> str:
        return config_key(stage, payload)
