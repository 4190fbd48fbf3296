"""What a driver gets: the typed config, its run dir, the artifact cache and the tracker."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ray.util.placement_group import PlacementGroup

from actors.group import RoleGroup
from actors.pool import GroupPool
from alignment.chat_format import Conversation
from alignment.data.formats import FilePrompt, load_prompts
from alignment.data.loaders import load_moss_sft
from alignment.world import World, WorldPrompt, WorldSpec
from experiments.config import ActorResources, LabConfig, WorldConfig
from experiments.runtime.cache import Artifact, ArtifactCache, config_key, content_addressed, reuse
from experiments.runtime.costs import Ledger
from experiments.runtime.tracking import Tracker


def make_world(cfg: WorldConfig) -> World:
    return World(WorldSpec(seed=cfg.seed, category_weights=cfg.category_weights, zh_share=cfg.zh_share,
                           turn_weights=tuple(cfg.turn_weights), val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction, tool_share=cfg.tool_share))


@dataclass
class RunContext:
    cfg: LabConfig
    run_dir: Path
    cache: ArtifactCache
    tracker: Tracker
    run_tag: str
    started: float = field(default_factory=time.time)
    costs: Ledger = field(init=False)
    pool: GroupPool | None = field(init=False, default=None)  # with ``ray.reuse_actors``
    # torch threads per actor for a stage, set while the run is going (``widen``), and the live groups
    threads: dict[str, int] = field(default_factory=dict)
    nice: dict[str, int] = field(default_factory=dict)  # OS priority (Linux nice) of a stage's actors
    _groups: dict[str, list[RoleGroup]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.costs = Ledger(self.run_dir, self.started)
        if self.cfg.ray.reuse_actors:
            self.pool = GroupPool(self.run_tag)

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
              pg: PlacementGroup | None = None, pooled: bool = True) -> RoleGroup:
        """An actor group for ``stage``; its usage joins the stage's cost when it shuts down.

        With ``ray.reuse_actors`` an idle group of an earlier stage comes back from the pool, or a
        new one is named ``<run>/<role>-<rank>`` and goes to the pool when the stage shuts it
        down. Otherwise, and for a group in a shared placement group ``pg``, it is named
        ``<run>/<stage>/<role>-<rank>`` and killed at shutdown, as is one that must not be
        ``pooled``."""
        with self._lock:
            num_threads = self.threads.get(stage, num_threads)
        nice, record = self.nice.get(stage, 0), self.costs.recorder(stage)
        if self.pool is not None and pg is None and pooled:
            group = self.pool.acquire(actor_cls, role, res, num_threads, nice, record)
        else:
            group = RoleGroup(actor_cls, role, res, num_threads, pg=pg, run_tag=f"{self.run_tag}/{stage}",
                              on_shutdown=record, nice=nice)
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

    def for_method(self, method: str) -> RunContext:
        """This run's context as a method that ``compare`` trains sees it: GRPO and RLOO run the PPO
        loop under their own name with ``compare.grpo`` / ``compare.rloo`` as ``algo``; the other
        methods read the run's config as it is. The cache, tracker, cost ledger, groups and world are
        shared with this context."""
        if method not in ("grpo", "rloo"):
            return self
        view = copy.copy(self)
        view.cfg = dataclasses.replace(self.cfg, stage=method, algo=getattr(self.cfg.compare, method))
        return view

    def close(self) -> None:
        """Kill the run's idle actors (the end of a run)."""
        if self.pool is not None:
            self.pool.close()

    @cached_property
    def world(self) -> World:
        return make_world(self.cfg.data.world)

    @property
    def on_world(self) -> bool:
        """Whether the held-out prompts are the world's (the gold judge can score them)."""
        return self.cfg.eval.prompts_path is None

    @property
    def world_data(self) -> bool:
        """Whether the SFT data is the world's (``data.source=world``) rather than a file."""
        return self.cfg.data.source == "world"

    def sft_conversations(self, n: int | None = None) -> list[Conversation]:
        """The SFT data (``data.source``): ``n`` fresh world conversations (default ``data.n_train``), or
        the first ``n`` (default all) of the MOSS-003 file at ``data.path``."""
        d = self.cfg.data
        if d.source == "world":
            return self.world.sft_conversations(d.n_train if n is None else n, d.world.sft_source_weights)
        if d.source == "moss_sft":
            return [ex.conversation for ex in load_moss_sft(d.path)][:n]
        raise ValueError(f"data.source: unknown source {d.source!r}; choose 'world' or 'moss_sft'")

    @cached_property
    def test_prompts(self) -> list[WorldPrompt] | list[FilePrompt]:
        """The held-out prompts every evaluation answers: the first ``eval.n_prompts`` of
        ``eval.prompts_path``, or of the world's test split."""
        e = self.cfg.eval
        if e.prompts_path is None:
            return self.world.prompts("test", e.n_prompts)
        return load_prompts(e.prompts_path, e.prompts_format)[: e.n_prompts]

    def cache_key(self, stage: str, payload: dict) -> str:
        """The key of ``payload``, with each user file or model directory in it keyed by its content
        (``experiments.cache.content_addressed``): an in-place edit makes a new artifact."""
        return config_key(stage, content_addressed(payload, self.cache.root))
