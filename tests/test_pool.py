"""Actor reuse across the stages of a run (``actors/pool.py``): a stage's finished group serves the
next stage that asks for the same class and resources, without its model and with a fresh usage
count; idle groups make room when a new group cannot be placed; ``close`` kills them."""

from __future__ import annotations

from pathlib import Path

import pytest


def _ctx(tmp_path: Path):
    from experiments.config import LabConfig
    from experiments.runtime.cache import ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.runtime.tracking import Tracker

    cfg = LabConfig(stage="pat")
    cfg.logger.wandb = False
    tracker = Tracker(tmp_path / "run", cfg.logger, {}, job_type="pat")
    return RunContext(cfg, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker, run_tag="pool-test")


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer) -> Path:
    from alignment.models.causal_lm import ArchSpec, build_tiny

    path = tmp_path_factory.mktemp("pool_models") / "sft"
    build_tiny(ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer,
               seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _has_model(actor) -> bool:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: hasattr(self, "model") or hasattr(self, "engine")))


def test_a_finished_stages_group_serves_the_next_stage(ray_address, tmp_path, sft_dir):
    import ray

    from actors.reference import ReferenceActor
    from experiments.config import ActorResources

    ctx = _ctx(tmp_path)
    res = ActorResources(num_actors=1, num_cpus=0.25)
    try:
        first = ctx.group(ReferenceActor, "reference", res, 1, "pm")
        first.call("init_model", str(sft_dir))
        actor = first.actors[0]
        started = first.usage()
        first.shutdown()
        assert ctx.pool.idle == 1 and first.actors == []
        first.shutdown()  # a second shutdown of the same handle neither parks nor kills again
        assert ctx.pool.idle == 1 and ray.get(actor.num_threads.remote()) == 1
        assert not _has_model(actor)  # an idle actor holds no weights

        second = ctx.group(ReferenceActor, "scorer", res, 2, "pat")
        assert second.actors == [actor] and ctx.pool.idle == 0
        assert ray.get(actor.num_threads.remote()) == 2
        reused = second.usage()
        # the new stage pays for its own calls only, not for the process start and first model
        assert reused["cpu_s"] < started["cpu_s"] and reused["role"] == "scorer"
        second.call("init_model", str(sft_dir))
        assert _has_model(actor)

        other = ctx.group(ReferenceActor, "reference", ActorResources(num_actors=1, num_cpus=0.5), 1, "eval")
        assert other.actors != [actor]  # other resources: a group of its own
        second.shutdown()
        other.shutdown()
        assert ctx.pool.idle == 2
    finally:
        ctx.close()
    assert ctx.pool.idle == 0
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.num_threads.remote())
    ctx.tracker.finish()


def test_idle_groups_make_room_for_a_group_that_does_not_fit(ray_address, tmp_path):
    import ray

    from actors.preference import PreferenceActor
    from actors.reference import ReferenceActor
    from experiments.config import ActorResources

    ctx = _ctx(tmp_path)
    try:
        whole = ctx.group(ReferenceActor, "reference", ActorResources(num_actors=1, num_cpus=2), 1, "sft")
        held = whole.actors[0]
        whole.shutdown()
        assert ctx.pool.idle == 1  # it keeps the test cluster's 2 CPUs
        half = ctx.group(PreferenceActor, "preference", ActorResources(num_actors=1, num_cpus=1), 1, "pm")
        assert ray.get(half.actors[0].num_threads.remote()) == 1
        assert ctx.pool.idle == 0
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(held.num_threads.remote())
        half.shutdown()
    finally:
        ctx.close()
    ctx.tracker.finish()


def test_a_reused_data_parallel_group_trains_again_with_deepspeed(ray_address, tmp_path, sft_dir, world, tokenizer):
    """Two gloo ranks on DeepSpeed ZeRO-2 train, go idle and train a new engine in the same
    processes (as PAT does on SFT's actors): the ranks stay identical and the model moves."""
    from actors.engine import OptimConfig, StrategySpec
    from actors.policy import ModelSpec, PolicyActor
    from alignment.loss_mask import encode_many
    from experiments.config import ActorResources

    ctx = _ctx(tmp_path)
    res = ActorResources(num_actors=2, num_cpus=0.25)
    examples = encode_many(world.sft_conversations(4, [1] * 6), tokenizer)
    spec, strategy = ModelSpec(str(sft_dir), str(sft_dir)), StrategySpec(name="deepspeed", zero_stage=2)
    try:
        actors = None
        for stage in ("sft", "pat"):
            group = ctx.group(PolicyActor, "policy", res, 1, stage)
            assert actors is None or group.actors == actors  # the second stage got the first's actors
            actors = group.actors
            group.call("init_model", spec, strategy, OptimConfig(lr=1e-2, total_steps=2))
            start = group.call("weights_digest")
            for _ in range(2):
                group.call_sharded("sft_step", [examples[:2], examples[2:]])
            digests = group.call("weights_digest")
            assert digests[0] == digests[1] and digests[0] != start[0]
            group.shutdown()
    finally:
        ctx.close()
    ctx.tracker.finish()
