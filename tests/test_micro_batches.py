"""``*.micro_batch_size``: one optimizer step's gradient accumulated over micro-batches equals the
gradient of the whole batch at once (within float tolerance), for every trainer: SFT/PAT
(``sft_step``), the preference model (``pm_step``), DPO (``dpo_step``), and PPO's policy and
critic updates. Each micro-batch's mean loss is weighted by its share of the batch's tokens,
pairs or rows, so a micro-batch with more labelled tokens counts for more, as in the whole batch."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from actors.engine import OptimConfig, StrategySpec
from tests.builders import save_sft_and_pm


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    return save_sft_and_pm(tmp_path_factory.mktemp("micro_models"), tokenizer)


def _capture(actor) -> list:
    """Record the gradients the engine steps with (lr 0: the weights stay, so runs compare)."""
    grads, step = [], actor.engine.step

    def recording():
        grads.append([p.grad.detach().clone() for p in actor.engine.module.parameters() if p.grad is not None])
        return step()

    actor.engine.step = recording
    return grads


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b))
    for x, y in zip(a, b):
        for gx, gy in zip(x, y):
            torch.testing.assert_close(gx, gy, rtol=1e-4, atol=1e-6)


def _policy(sft, micro: int):
    from actors.policy import ModelSpec, PolicyActor

    actor = PolicyActor(0, 1, torch.get_num_threads())
    actor.init_model(ModelSpec(tokenizer_path=str(sft), path=str(sft)), StrategySpec(),
                     OptimConfig(lr=0.0, micro_batch_size=micro))
    return actor


def test_sft_and_dpo_steps_match_the_whole_batch(models, world):
    from actors.policy import DPOPair, DPOSpec
    from alignment.loss_mask import encode_many
    from alignment.models.tokenizer import load_tokenizer
    from alignment.sequences import reply_sequences

    sft, _ = models
    tok = load_tokenizer(str(sft))
    examples = encode_many(world.sft_conversations(7, [1] * 6), tok)  # lengths differ: token shares matter
    assert len({sum(e.loss_mask) for e in examples}) > 1
    prompts = world.prompts("train", 5)
    rng = random.Random(0)
    pairs = []
    for p in prompts:
        rows = reply_sequences(tok, [p.conversation()] * 2, ["A good reply.", "No." * rng.randint(1, 4)], 128,
                               with_masks=True)
        pairs.append(DPOPair(rows[0], rows[1], -10.0, -11.0))
    out = {}
    for micro in (0, 2):
        actor = _policy(sft, micro)
        grads = _capture(actor)
        sft_stats = actor.sft_step(examples)
        dpo_stats = actor.dpo_step(pairs, DPOSpec())
        out[micro] = grads, sft_stats, dpo_stats
    _same(out[0][0], out[2][0])
    for whole, micro in ((out[0][1], out[2][1]), (out[0][2], out[2][2])):
        assert whole.keys() == micro.keys()
        for k in ("loss", "tokens", "pairs", "chosen_logps", "grad_norm"):
            if k in whole:
                assert micro[k] == pytest.approx(whole[k], rel=1e-4, abs=1e-6), k


def test_pm_step_matches_the_whole_batch(models, world):
    from actors.preference import PreferenceActor
    from alignment.models.tokenizer import load_tokenizer
    from alignment.sequences import scored_sequences

    sft, _ = models
    tok = load_tokenizer(str(sft))
    groups = []
    for i, p in enumerate(world.prompts("train", 5)):
        cands = ["Yes.", "A longer reply here.", "No." * (i + 1)]
        pairs = [(0, 1), (1, 2)] if i % 2 else [(2, 0)]  # groups with different numbers of pairs
        groups.append((scored_sequences(tok, [p.conversation()] * 3, cands, 128), pairs))
    out = {}
    for micro in (0, 2):
        actor = PreferenceActor(0, 1, torch.get_num_threads())
        actor.init_model(str(sft), True, StrategySpec(), OptimConfig(lr=0.0, micro_batch_size=micro))
        torch.nn.init.normal_(actor.engine.module.score.weight, std=0.1, generator=torch.Generator().manual_seed(0))
        grads = _capture(actor)
        out[micro] = grads, actor.pm_step(groups)
    _same(out[0][0], out[2][0])
    assert out[2][1]["loss"] == pytest.approx(out[0][1]["loss"], rel=1e-5)
    assert out[2][1]["n"] == out[0][1]["n"] == 7


def test_ppo_policy_and_critic_updates_match_the_whole_batch(models, world):
    from actors.critic import CriticActor, CriticSpec
    from actors.policy import PolicyUpdateSpec
    from alignment.generation import RolloutSpec
    from alignment.loss_mask import encode_many
    from alignment.models.tokenizer import load_tokenizer
    from alignment.sequences import prompt_ids

    sft, pm = models
    tok = load_tokenizer(str(sft))
    prompts = [prompt_ids(tok, p.conversation()) for p in world.prompts("train", 5)]
    ptx = encode_many(world.sft_conversations(3, [1] * 6), tok)
    out = {}
    for micro in (0, 2):
        actor = _policy(sft, micro)
        rollout, _ = actor.rollout(prompts, RolloutSpec(max_new_tokens=8), seed=0)
        mask = rollout.response_mask.clone()
        for row, keep in enumerate((8, 2, 5, 1, 7)):  # rows of different lengths (as a tool's tokens are masked)
            mask[row, keep:] = 0
        rollout = replace(rollout, response_mask=mask)
        adv = torch.randn(rollout.response_mask.shape, generator=torch.Generator().manual_seed(1))
        ref = rollout.logprobs + 0.1 * torch.randn(rollout.logprobs.shape, generator=torch.Generator().manual_seed(2))
        grads = _capture(actor)
        stats = actor.ppo_update(rollout, adv, ptx, PolicyUpdateSpec(ptx_coef=0.5, kl_coef=0.1, mini_batches=1),
                                 ref_logprobs=ref)
        critic = CriticActor(0, 1, torch.get_num_threads())
        critic.init_model(str(pm), False, StrategySpec(), OptimConfig(lr=0.0, micro_batch_size=micro))
        critic_grads = _capture(critic)
        returns = torch.randn(rollout.response_mask.shape, generator=torch.Generator().manual_seed(3))
        critic_stats = critic.update(rollout, critic.values(rollout), returns, CriticSpec())
        out[micro] = rollout, grads, stats, critic_grads, critic_stats
    assert torch.equal(out[0][0].sequences, out[2][0].sequences)  # the same rollout, seeded
    assert len({int(m.sum()) for m in out[0][0].response_mask}) > 1  # rows of different lengths
    _same(out[0][1], out[2][1])
    _same(out[0][3], out[2][3])
    for k in ("policy/policy_loss", "policy/ptx_loss", "policy/kl_loss", "policy/grad_norm"):
        assert out[2][2][k] == pytest.approx(out[0][2][k], rel=1e-4, abs=1e-6), k
    assert out[2][4]["critic/value_loss"] == pytest.approx(out[0][4]["critic/value_loss"], rel=1e-4)
