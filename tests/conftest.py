"""Shared fixtures: one Ray instance for the whole session, a small world and its tokenizer."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_address():
    """Start Ray once; tests and the subprocess runs they launch (ray.address=...) share it."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, namespace="alignment-lab-tests")
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="session")
def world():
    from alignment.world import World, WorldSpec

    return World(WorldSpec(seed=0))


@pytest.fixture(scope="session")
def tokenizer(world):
    from alignment.models.tokenizer import train_bpe

    return train_bpe(world.corpus(600), 512)
