"""How the evaluation's policy groups share the machine (``experiments.evaluation.replies``)."""

from __future__ import annotations


def test_policy_groups_share_the_cores_out_instead_of_oversubscribing_them():
    """``side_by_side``: on 2 CPUs, four models' evaluation groups (one rank of 2 threads each)
    sample two at a time with one thread each, never 8 threads on 2 cores; one group keeps its 2
    threads; 16 CPUs take all four at 2 threads; on GPUs all go at once."""
    from experiments.config import LabConfig
    from experiments.evaluation.replies import side_by_side

    cfg = LabConfig()
    cfg.trainer.num_threads = 2
    assert side_by_side(cfg, 4, cpus=2) == (2, 1)
    assert side_by_side(cfg, 1, cpus=2) == (1, 2)
    assert side_by_side(cfg, 4, cpus=16) == (4, 2)
    assert side_by_side(cfg, 3, cpus=1) == (1, 1)
    cfg.ray.policy.num_actors = 2  # two ranks per group: a group per two cores
    assert side_by_side(cfg, 4, cpus=4) == (2, 1)
    cfg.ray.policy.num_gpus = 1
    assert side_by_side(cfg, 4, cpus=2) == (4, 2)
