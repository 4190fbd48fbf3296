"""A placement the cluster can never hold fails at once, naming what was asked and what there is."""

from __future__ import annotations

import time

import pytest

from actors.placement import PlacementError, infeasible


def test_infeasible_names_the_resource_and_the_shortfall():
    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 4.0, "GPU": 1.0}]
    assert infeasible([{"CPU": 2.0}, {"CPU": 4.0}], nodes) is None
    assert infeasible([{"CPU": 4.0}, {"CPU": 4.0}], nodes) == "8 CPU in all, and the cluster has 6"
    assert infeasible([{"CPU": 5.0}], nodes) == "5 CPU for one actor, and the largest node has 4"
    assert infeasible([{"CPU": 1.0, "GPU": 0.5}] * 4, nodes) == "2 GPU in all, and the cluster has 1"


def test_an_impossible_group_fails_within_seconds(ray_address):
    from actors.group import RoleGroup
    from actors.reference import ReferenceActor
    from actors.resources import ActorResources

    started = time.time()
    with pytest.raises(PlacementError, match=r"ray\.reference: 3 actor\(s\): asks for 3 CPU .*: 3 CPU in all, and the "
                                             r"cluster has 2\. Lower the role's num_actors"):
        RoleGroup(ReferenceActor, "reference", ActorResources(num_actors=3, num_cpus=1.0))
    with pytest.raises(PlacementError, match=r"1 GPU in all, and the cluster has 0"):
        RoleGroup(ReferenceActor, "reference", ActorResources(num_actors=1, num_cpus=0.5, num_gpus=1.0))
    assert time.time() - started < 10
