"""Actor groups: the ranks of one role, placed with a placement group and called together."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.placement import reserve
from actors.resources import ActorResources
from alignment.data.batching import shard


def bundles(res: ActorResources) -> list[dict[str, float]]:
    one = {"CPU": res.num_cpus} | ({"GPU": res.num_gpus} if res.num_gpus else {})
    return [dict(one) for _ in range(res.num_actors)]


class RoleGroup:
    """``res.num_actors`` data-parallel actors of ``actor_cls``, named ``<run>/<role>-<rank>``.

    With ``pg`` and ``bundle_offset`` a group shares a placement group with other roles
    (colocation), or uses one reserved for it (``owns_pg``); otherwise it reserves its own.
    ``on_shutdown`` receives the group's ``usage()`` when it shuts down (the cost ledger of the
    run). ``nice`` lowers the actors' OS priority, so they use the CPU time other roles leave idle.
    ``on_release``, when it returns True, has taken the actors over at shutdown (``GroupPool``):
    they stay alive for a later stage instead of being killed.
    """

    pool_key: tuple | None = None  # set by the ``GroupPool`` that made or lent the group

    def __init__(
        self, actor_cls: type, role: str, res: ActorResources, num_threads: int = 2,
        pg: PlacementGroup | None = None, bundle_offset: int = 0, run_tag: str | None = None,
        on_shutdown: Callable[[dict[str, float]], None] | None = None, nice: int = 0,
        owns_pg: bool = False, on_release: Callable[[RoleGroup], bool] | None = None,
    ):
        self.role, self.on_shutdown, self.on_release, self.started = role, on_shutdown, on_release, time.time()
        self.owns_pg = pg is None or owns_pg
        if pg is None:
            pg = reserve(bundles(res), f"ray.{role}: {res.num_actors} actor(s)")
        self.pg = pg
        tag = run_tag or uuid.uuid4().hex[:6]
        remote_cls = ray.remote(actor_cls)
        self.actors = [
            remote_cls.options(
                name=f"{tag}/{role}-{rank}",
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=bundle_offset + rank),
            ).remote(rank, res.num_actors, num_threads, nice)
            for rank in range(res.num_actors)
        ]
        # the rendezvous is queued, not awaited: the actors start (5-6 s of imports each) while the
        # driver prepares their data; calls run in order on an actor, so every later call follows it
        where = self.actors[0].master_address.remote()
        self._joining = [a.setup_distributed.remote(where) for a in self.actors]

    @property
    def size(self) -> int:
        return len(self.actors)

    def submit(self, method: str, per_rank: Sequence[tuple] | None = None, **kwargs: Any) -> list[Any]:
        """Start ``method`` on every rank (rank i gets ``*per_rank[i]``) without waiting; returns
        object refs for ``wait``. Roles submitted back to back run concurrently."""
        if per_rank is None:
            per_rank = [()] * self.size
        if len(per_rank) != self.size:
            raise ValueError(f"{self.role}: got {len(per_rank)} argument sets for {self.size} actors")
        if self._joining:  # the first call: surface a failed start or rendezvous here
            ray.get(self._joining)
            self._joining = []
        return [getattr(a, method).remote(*args, **kwargs) for a, args in zip(self.actors, per_rank)]

    @staticmethod
    def wait(refs: list[Any]) -> list[Any]:
        return ray.get(refs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every rank with the same arguments; wait for all results."""
        return self.wait(self.submit(method, [args] * self.size, **kwargs))

    def call_sharded(self, method: str, shards: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Call ``method`` on rank i with ``shards[i]``."""
        return self.wait(self.submit(method, [(s,) for s in shards], **kwargs))

    def map_sharded(self, method: str, items: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Split ``items`` over the ranks, call ``method`` on each share, and join the results in order."""
        return [out for part in self.call_sharded(method, shard(items, self.size), **kwargs) for out in part]

    def usage(self) -> dict[str, float]:
        """The role's cost so far, over its ranks: CPU seconds, peak memory (ranks summed), tokens
        sampled, and parameter updates (rank 0's: data-parallel ranks update the same weights)."""
        ranks = self.wait([a.usage.remote() for a in self.actors])
        return join_usage(self.role, ranks, self.started)

    def set_threads(self, num_threads: int) -> None:
        """Give every rank ``num_threads`` torch threads from its next call on (not awaited)."""
        for a in self.actors:
            a.set_num_threads.remote(num_threads)

    @classmethod
    def adopt(cls, role: str, actors: list[Any], pg: PlacementGroup, owns_pg: bool,
              on_shutdown: Callable[[dict[str, float]], None] | None = None,
              on_release: Callable[[RoleGroup], bool] | None = None) -> RoleGroup:
        """A group over live, already joined ``actors`` (an idle group handed to a new stage)."""
        group = cls.__new__(cls)
        group.role, group.on_shutdown, group.on_release, group.started = role, on_shutdown, on_release, time.time()
        group.actors, group.pg, group.owns_pg, group._joining = list(actors), pg, owns_pg, []
        return group

    def shutdown(self) -> None:
        if self.on_shutdown is not None and self.actors:
            try:
                self.on_shutdown(self.usage())
            except ray.exceptions.RayError:  # a dead actor has no usage to report; still clean up
                self.on_release = None
        if self.actors and self.on_release is not None and self.on_release(self):
            self.actors, self.owns_pg = [], False  # handed over: this handle is done with them
            return
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.owns_pg:  # once: shutting down twice is harmless
            remove_placement_group(self.pg)
            self.owns_pg = False


def join_usage(role: str, ranks: Sequence[dict[str, float]], started: float) -> dict[str, float]:
    out: dict[str, float] = {"role": role, "ranks": len(ranks), "started": started, "ended": time.time()}
    for key in ("cpu_s", "peak_rss_mb", "gpu_peak_mb", "tokens_generated"):
        out[key] = sum(r[key] for r in ranks)
    out["param_updates"] = ranks[0]["param_updates"] if ranks else 0.0
    return out


class LocalGroup(RoleGroup):
    """One rank of ``actor_cls`` in this process, behind the ``RoleGroup`` interface (no Ray).

    For measuring what Ray costs, and for debugging a role with a plain debugger."""

    def __init__(self, actor_cls: type, role: str, num_threads: int = 2,
                 on_shutdown: Callable[[dict[str, float]], None] | None = None):
        self.role, self.owns_pg, self.pg = role, False, None
        self.on_shutdown, self.started = on_shutdown, time.time()
        self.actors = [actor_cls(0, 1, num_threads)]
        self._joining = []

    def submit(self, method: str, per_rank: Sequence[tuple] | None = None, **kwargs: Any) -> list[Any]:
        args = per_rank[0] if per_rank else ()
        return [getattr(self.actors[0], method)(*args, **kwargs)]

    @staticmethod
    def wait(refs: list[Any]) -> list[Any]:
        return refs

    def usage(self) -> dict[str, float]:
        return join_usage(self.role, [a.usage() for a in self.actors], self.started)

    def set_threads(self, num_threads: int) -> None:
        for a in self.actors:
            a.set_num_threads(num_threads)

    def shutdown(self) -> None:
        if self.on_shutdown is not None and self.actors:
            self.on_shutdown(self.usage())
        self.actors = []


def colocated_pg(resources: Sequence[ActorResources]) -> PlacementGroup:
    """One placement group whose bundle i holds rank i of every role (colocation: the roles share
    the bundle's GPUs, e.g. 0.25 GPU each). All roles need the same number of actors."""
    sizes = {r.num_actors for r in resources}
    if len(sizes) != 1:
        raise ValueError(f"colocated roles need the same num_actors, got {sorted(sizes)}")
    one: dict[str, float] = {"CPU": sum(r.num_cpus for r in resources)}
    gpus = sum(r.num_gpus for r in resources)
    if gpus:
        one["GPU"] = gpus
    n = sizes.pop()
    return reserve([dict(one) for _ in range(n)], f"ray.colocate: {n} bundle(s) of every role")
