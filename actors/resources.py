"""What one role asks of the cluster: how many actors, and each one's CPUs and GPUs.

A plain dataclass at the actor layer; the config schema (``experiments/config.py``) uses it for
``ray.policy``, ``ray.critic`` and the other roles."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ActorResources:
    num_actors: int = 1  # data-parallel actors of this role
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def ranks_may_share_a_gpu(num_actors: int, gpus_per_rank: float) -> bool:
    """Whether Ray may put two of ``num_actors`` data-parallel ranks, each reserving ``gpus_per_rank``
    of a GPU (a role's ``num_gpus``, or a colocated bundle's sum), on the same GPU: it packs fractions
    of one GPU until they add up to 1, and NCCL refuses two ranks of one group on one device
    ("Duplicate GPU detected")."""
    return num_actors > 1 and 0 < gpus_per_rank <= 0.5


def shared_gpu_error(what: str, num_actors: int, gpus_per_rank: float) -> str | None:
    """Why ``what`` (e.g. ``ray.policy``) cannot run its ranks on those GPU shares, or None."""
    if not ranks_may_share_a_gpu(num_actors, gpus_per_rank):
        return None
    return (f"{what}: {num_actors} data-parallel ranks with {gpus_per_rank:g} GPU each: Ray may pack two of them "
            "onto one GPU, and NCCL takes no two ranks of a group on one device. Give each rank more than half "
            "a GPU (num_gpus > 0.5, or whole GPUs), or use one rank (num_actors=1)")
