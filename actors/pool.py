"""Idle actor groups kept for the next stage of the same run.

Starting a role actor costs a new process that imports torch and transformers (5-6 s of CPU on
the 2-core default), and a chain starts a group per role and stage: SFT's policy, the preference
model's, PAT's scorer and policy, the evaluation's. A ``GroupPool`` keeps a group that a stage
shuts down alive, without its model (``RoleActor.unload``), and hands it to the next stage that
asks for the same actor class and resources; that stage loads its own model with ``init_model``
as on a fresh actor, and the group reports only that stage's usage (``RoleActor.reset_usage``).

An idle group still holds its placement-group bundles. When a new group cannot be placed, the
pool kills idle groups, oldest first, until it can.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from ray.util.placement_group import PlacementGroup

from actors.group import RoleGroup, bundles
from actors.placement import reserve
from actors.resources import ActorResources


class GroupPool:
    """Actor groups of one run, reused across its stages; ``close`` kills the idle ones."""

    def __init__(self, run_tag: str):
        self.run_tag = run_tag
        self._idle: list[RoleGroup] = []  # handles of their own, without a stage's callbacks
        self._names: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def key(actor_cls: type, res: ActorResources, nice: int) -> tuple:
        return (actor_cls, res.num_actors, res.num_cpus, res.num_gpus, nice)

    def acquire(self, actor_cls: type, role: str, res: ActorResources, num_threads: int, nice: int = 0,
                on_shutdown: Callable[[dict[str, float]], None] | None = None) -> RoleGroup:
        """An idle group of ``actor_cls`` with ``res`` (given ``num_threads`` and a fresh usage
        count), or a new one named ``<run>/<role>-<rank>``."""
        key = self.key(actor_cls, res, nice)
        with self._lock:
            idle = next((g for g in self._idle if g.pool_key == key), None)
            if idle is not None:
                self._idle.remove(idle)
            else:
                self._names[role] += 1
                name = role if self._names[role] == 1 else f"{role}{self._names[role]}"
        if idle is not None:
            group = RoleGroup.adopt(role, idle.actors, idle.pg, idle.owns_pg, on_shutdown, self._park)
            for a in group.actors:  # queued ahead of the stage's first call
                a.reset_usage.remote()
            group.set_threads(num_threads)
        else:
            group = RoleGroup(actor_cls, name, res, num_threads, pg=self._reserve(role, res), owns_pg=True,
                              run_tag=self.run_tag, on_shutdown=on_shutdown, nice=nice, on_release=self._park)
            group.role = role
        group.pool_key = key
        return group

    def _reserve(self, role: str, res: ActorResources) -> PlacementGroup:
        """A ready placement group for ``res``, evicting idle groups while there is no room."""

        def evict_one() -> bool:
            with self._lock:
                victim = self._idle.pop(0) if self._idle else None
            if victim is not None:
                victim.shutdown()
            return victim is not None

        return reserve(bundles(res), f"ray.{role}: {res.num_actors} actor(s)", while_waiting=evict_one)

    def _park(self, group: RoleGroup) -> bool:
        """``RoleGroup.on_release``: keep ``group``'s actors, without their models, unless closed."""
        with self._lock:
            if self._closed:
                return False
            for a in group.actors:
                a.unload.remote()
            idle = RoleGroup.adopt(group.role, group.actors, group.pg, group.owns_pg)  # killed by shutdown()
            idle.pool_key = group.pool_key
            self._idle.append(idle)
        return True

    @property
    def idle(self) -> int:
        """How many idle groups the pool holds."""
        with self._lock:
            return len(self._idle)

    def evict(self) -> None:
        """Kill the idle groups now, freeing their resources for a placement the pool does not
        make (PPO's colocated roles)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for g in idle:
            g.shutdown()

    def close(self) -> None:
        """Kill the idle groups; groups still in use are killed when they shut down."""
        with self._lock:
            self._closed = True
        self.evict()
