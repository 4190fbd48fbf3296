"""An interrupted training stage resumes from its newest checkpoint and ends with the weights of
an uninterrupted run: SFT and PAT (both ``sft_step`` over length-bucketed batches) and the
preference model's loop (plain shuffled batches), killed right after a checkpoint, across an
epoch boundary."""

from __future__ import annotations

import json

import pytest
import torch

from alignment.models.causal_lm import ArchSpec, build_tiny

STEPS_PER_EPOCH = 5  # 20 examples in batches of 4


class Killed(Exception):
    pass


class KillAt:
    """A tracker that stands in for the run being killed when step ``at`` is logged."""

    def __init__(self, at: int | None):
        self.at, self.steps = at, []

    def log(self, row, step=None):
        if step == self.at:
            raise Killed(step)
        self.steps.append(step)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("resume_model")
    model = build_tiny(ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer, seed=0)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def _train(sft_dir, examples, root, kill_at=None, batcher=None):
    from actors.engine import OptimConfig, StrategySpec
    from actors.group import LocalGroup
    from actors.policy import ModelSpec, PolicyActor
    from experiments.config import TrainerConfig
    from experiments.runtime.loop import Checkpoints, train_loop

    t = TrainerConfig(epochs=2, batch_size=4, log_every=1, checkpoint_every=3)
    group = LocalGroup(PolicyActor, "policy", num_threads=torch.get_num_threads())
    group.call("init_model", ModelSpec(tokenizer_path=str(sft_dir), path=str(sft_dir)), StrategySpec(),
               OptimConfig(lr=5e-3, warmup_steps=2, total_steps=2 * STEPS_PER_EPOCH, min_lr_ratio=0.1))
    tracker = KillAt(kill_at)
    last = train_loop(group, "sft_step", examples, t, tracker, "sft", "tokens", seed=3, batcher=batcher,
                      checkpoints=Checkpoints(root, t.checkpoint_every))
    params = {k: v.detach().clone() for k, v in group.actors[0].engine.module.state_dict().items()}
    return last, params, tracker.steps


@pytest.mark.parametrize("bucketed", [True, False], ids=["sft_and_pat_batches", "pm_batches"])
def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, sft_dir, world, tokenizer, bucketed):
    from alignment.data.batching import bucketed_batches
    from alignment.loss_mask import LossPolicy, encode_many

    examples = encode_many(world.sft_conversations(20, [1.0] * 6), tokenizer, LossPolicy.from_names(["moss"]))
    batcher = bucketed_batches if bucketed else None
    whole, whole_params, _ = _train(sft_dir, examples, tmp_path / "whole", batcher=batcher)
    assert whole["sft/steps"] == 2 * STEPS_PER_EPOCH

    root = tmp_path / "killed"
    with pytest.raises(Killed):  # killed in the second epoch, one step after the checkpoint at step 6
        _train(sft_dir, examples, root, kill_at=7, batcher=batcher)
    saved = sorted(p.name for p in root.glob("step_*"))
    assert saved == ["step_000006"]  # the newest only; an older one is dropped when a newer is written
    state = json.loads((root / "step_000006" / "loop_state.json").read_text())
    assert (state["step"], state["epoch"], state["dealt"]) == (6, 1, 1)

    resumed, params, logged = _train(sft_dir, examples, root, batcher=batcher)
    assert logged == [7, 8, 9, 10]  # it went on from step 6
    assert resumed["sft/steps"] == whole["sft/steps"] and resumed["sft/loss"] == pytest.approx(whole["sft/loss"])
    for name, value in whole_params.items():
        torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-6, msg=name)
