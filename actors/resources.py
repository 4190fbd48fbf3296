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
