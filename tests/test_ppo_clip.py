"""PPO's clip acts once an update takes several optimizer steps per rollout: after the first step
the policy being updated is no longer the one that sampled, so the ratio leaves 1, the clip fraction
is positive, and the clip range changes the update. With one step per rollout it cannot."""

from __future__ import annotations

import pytest
import torch


def _policy(tokenizer, tmp_path, lr: float):
    from actors.engine import OptimConfig, StrategySpec
    from actors.policy import ModelSpec, PolicyActor
    from alignment.models.causal_lm import ArchSpec

    tok_dir = tmp_path / "tok"
    if not tok_dir.exists():
        tokenizer.save_pretrained(tok_dir)
    actor = PolicyActor(rank=0, world_size=1, num_threads=1)
    arch = ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)
    actor.init_model(ModelSpec(str(tok_dir), arch=arch, seed=0), StrategySpec(),
                     OptimConfig(lr=lr, warmup_steps=0, total_steps=100, min_lr_ratio=1.0))
    return actor


def _update(tokenizer, tmp_path, clip: float, epochs: int, mini_batches: int):
    from actors.policy import PolicyUpdateSpec
    from alignment.generation import RolloutSpec

    actor = _policy(tokenizer, tmp_path, lr=5e-2)
    prompts = [tokenizer.encode(p) for p in ("hello there", "write a poem", "what is two plus two", "name a city")]
    rollout, _ = actor.rollout(prompts, RolloutSpec(max_new_tokens=12), seed=0)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand_as(rollout.response_mask).clone()
    spec = PolicyUpdateSpec(clip=clip, epochs=epochs, mini_batches=mini_batches)
    stats = actor.ppo_update(rollout, advantages * rollout.response_mask, None, spec)
    return stats, actor.weights_digest()


def test_one_step_per_rollout_leaves_the_clip_inert(tokenizer, tmp_path):
    tight, tight_w = _update(tokenizer, tmp_path, clip=0.05, epochs=1, mini_batches=1)
    loose, loose_w = _update(tokenizer, tmp_path, clip=10.0, epochs=1, mini_batches=1)
    assert tight["policy/clip_frac"] == loose["policy/clip_frac"] == 0.0
    assert tight_w == loose_w  # the ratio is exactly 1 at the only step: the clip range cannot matter


@pytest.mark.parametrize("epochs,mini_batches", [(2, 1), (1, 2), (2, 2)])
def test_several_steps_per_rollout_make_the_clip_act(tokenizer, tmp_path, epochs, mini_batches):
    tight, tight_w = _update(tokenizer, tmp_path, clip=0.05, epochs=epochs, mini_batches=mini_batches)
    loose, loose_w = _update(tokenizer, tmp_path, clip=10.0, epochs=epochs, mini_batches=mini_batches)
    # every step after the first sees a policy the earlier steps moved away from the sampler
    assert tight["policy/clip_frac"] > 0.0
    assert tight_w != loose_w
    assert loose["policy/clip_frac"] == 0.0
