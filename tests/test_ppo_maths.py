"""PPO maths against values worked out by hand or with naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.losses.gae import gae
from alignment.losses.kl import kl_estimate
from alignment.losses.masked import masked_mean, masked_whiten
from alignment.losses.ppo import explained_variance, policy_loss, value_loss
from alignment.losses.reward import RunningMoments, normalise_scores, token_rewards
from alignment.rollout import Rollout, at_responses, pack, response_tokens


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    # r = ref - logp = [-0.5, 1.0]
    assert torch.allclose(kl_estimate(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), torch.tensor([0.125, 0.5]))
    k3 = torch.tensor([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    assert torch.allclose(kl_estimate(logp, ref, "k3"), k3)
    same = torch.randn(5)
    for kind in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(same, same, kind), torch.zeros(5))
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(same, same, "k4")


def naive_gae(rewards, values, lengths, gamma, lam):
    adv = torch.zeros_like(values)
    for i, n in enumerate(lengths):
        for t in range(n):
            total = 0.0
            for k in range(t, n):
                next_v = values[i, k + 1].item() if k + 1 < n else 0.0
                delta = rewards[i, k].item() + gamma * next_v - values[i, k].item()
                total += (gamma * lam) ** (k - t) * delta
            adv[i, t] = total
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_naive_loop(gamma, lam):
    torch.manual_seed(0)
    lengths = [5, 2, 0, 7]
    mask = torch.zeros(4, 7)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = naive_gae(rewards, values, lengths, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-5)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-5)
    assert torch.equal(adv * (1 - mask), torch.zeros_like(adv))


def test_gae_monte_carlo_case():
    # gamma = lam = 1: the advantage is the sum of future rewards minus the value
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.8, 0.5, 0.3]]))
    assert torch.allclose(ret, torch.ones(1, 3))


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 0.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = masked_whiten(x, mask)
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (valid - valid.mean()) / valid.std()
    assert torch.allclose(w[mask.bool()], expected, atol=1e-5)
    assert torch.equal(w[~mask.bool()], torch.zeros(3))
    assert masked_mean(x, mask).item() == pytest.approx(3.0)


def test_policy_loss_clips_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, stats = policy_loss(new, old, adv, torch.ones(1, 3), clip=0.2)
    # per token: -min(r A, clip(r) A) = -min(1.5, 1.2) = -1.2; -min(0.5, 0.8) = -0.5; -min(-2.2, -2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    # the gradient flows only through the unclipped tokens
    new.requires_grad_(True)
    loss, _ = policy_loss(new, old, adv, torch.ones(1, 3), clip=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0 and new.grad[0, 2] != 0


def test_policy_loss_ignores_masked_tokens():
    new, old = torch.randn(2, 4), torch.randn(2, 4)
    adv, mask = torch.randn(2, 4), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    a, _ = policy_loss(new, old, adv, mask)
    new2 = torch.where(mask.bool(), new, torch.randn(2, 4) * 10)
    b, _ = policy_loss(new2, old, adv, mask)
    assert a.item() == pytest.approx(b.item())


def test_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: unclipped (1-0)^2 = 1, clipped V = 0.7 -> 0.49, max = 1; token 1: both 1
    assert loss.item() == pytest.approx(0.5 * (1 + 1) / 2)
    assert stats["value_clip_frac"].item() == 0
    values = torch.tensor([[0.0, 0.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: unclipped 0, clipped V = 0.3 -> 0.09 (taken); token 1: 1 and 1
    assert loss.item() == pytest.approx(0.5 * (0.09 + 1) / 2)
    assert stats["value_clip_frac"].item() == pytest.approx(0.5)
    loss, _ = value_loss(values, old, returns, torch.ones(1, 2), clip=None)
    assert loss.item() == pytest.approx(0.5 * (0 + 1) / 2)


def test_explained_variance():
    returns, mask = torch.randn(3, 5), torch.ones(3, 5)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, returns.mean()), returns, mask).item() == pytest.approx(
        0.0, abs=1e-6)


def test_token_rewards_put_score_on_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    r = token_rewards(torch.tensor([2.0, -1.0, 7.0]), kl, mask, beta=0.1)
    expected = torch.tensor([[-0.01, -0.02, 2.0 - 0.03], [-1.0 - 0.05, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(r, expected)


def test_running_moments_match_full_batch():
    torch.manual_seed(0)
    batches = [torch.randn(n) * 3 + 1 for n in (5, 17, 1, 40)]
    m = RunningMoments()
    for b in batches:
        m.update(b)
    full = torch.cat(batches).double()
    assert m.mean == pytest.approx(full.mean().item())
    assert m.std == pytest.approx(full.std(unbiased=False).item())
    m2 = RunningMoments()
    m2.load_state_dict(m.state_dict())
    assert m2 == m
    out = normalise_scores(torch.tensor([100.0, -100.0]), None, clip=5.0)
    assert out.tolist() == [5.0, -5.0]


def test_pack_and_response_grid(tokenizer):
    from alignment.generation import RolloutSpec, sample_responses
    from alignment.losses.logprobs import token_logprobs
    from alignment.models.causal_lm import ArchSpec, build_tiny

    model = build_tiny(ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer, seed=0)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    spec = RolloutSpec(max_new_tokens=6, temperature=0.9)
    responses, logprobs = sample_responses(model, prompts, spec, tokenizer.pad_token_id, tokenizer.eos_token_id)
    ro = pack(prompts, responses, logprobs, tokenizer.pad_token_id)
    assert ro.response_lengths.tolist() == [len(r) for r in responses]
    assert [row for row in ro.token_lists()] == [p + r for p, r in zip(prompts, responses)]
    tokens = response_tokens(ro)
    for i, r in enumerate(responses):
        assert tokens[i, : len(r)].tolist() == r
    # the log-probs generate() saw equal a full forward pass over the packed (right-padded) rows
    with torch.no_grad():
        logits = model(input_ids=ro.sequences, attention_mask=ro.attention_mask).logits
    forward = token_logprobs(at_responses(logits, ro), tokens, spec.temperature)
    assert torch.allclose(forward * ro.response_mask, ro.logprobs, atol=1e-4)
    values = torch.arange(ro.sequences.numel(), dtype=torch.float).view_as(ro.sequences)
    v = at_responses(values, ro)
    assert v[1, 0].item() == values[1, 1].item()  # the state after the 2-token prompt
    # split / cat round trip
    parts = ro.split(2)
    assert [p.size for p in parts] == [2, 1]
    back = Rollout.cat(parts, tokenizer.pad_token_id)
    assert torch.equal(back.sequences[:, : ro.sequences.size(1)], ro.sequences)
    assert torch.equal(back.logprobs, ro.logprobs)


def test_gae_and_rewards_skip_the_tokens_a_tool_wrote():
    """Inside a response, the tokens a tool wrote are outside the mask: the score lands on the last
    sampled token, and the advantages of the sampled tokens are those of the same response with the
    tool's tokens taken out."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0], [1, 0, 1, 1, 0, 0, 0, 0]], dtype=torch.float)
    values, kl = torch.randn(2, 8), torch.rand(2, 8)
    rewards = token_rewards(torch.tensor([1.0, -2.0]), kl, mask, beta=0.1)
    assert rewards[0, 6] == pytest.approx(1.0 - 0.1 * kl[0, 6].item()) and rewards[1, 3] == pytest.approx(
        -2.0 - 0.1 * kl[1, 3].item())
    assert (rewards * (1 - mask)).abs().sum() == 0
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    for row in range(2):
        keep = mask[row] > 0
        dense_adv, dense_ret = gae(rewards[row, keep][None], values[row, keep][None], torch.ones(1, int(keep.sum())),
                                   gamma=1.0, lam=0.9)
        torch.testing.assert_close(adv[row, keep], dense_adv[0])
        torch.testing.assert_close(ret[row, keep], dense_ret[0])
    assert (adv * (1 - mask)).abs().sum() == 0


def test_rollouts_with_tools_mask_what_the_program_wrote(tokenizer):
    """``sample_with_tools`` on a random tiny model: each pass runs out of tokens, so the program
    closes every field and writes the Results; those tokens carry mask 0 and log-prob 0, and the
    sampled tokens' log-probs equal the model's on the whole sequence, tool output included."""
    from alignment.chat_format import Conversation, ToolSwitch, Turn, meta_instruction
    from alignment.generation import RolloutSpec
    from alignment.models.causal_lm import ArchSpec, build_tiny
    from alignment.tool_use import sample_with_tools, tool_prompt

    model = build_tiny(ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer, seed=0)
    conv = Conversation(meta_instruction(ToolSwitch(enabled=frozenset({"Calculator"}))), (Turn("What is 2+3?", ""),))
    prompts = [tokenizer(tool_prompt(conv), add_special_tokens=False)["input_ids"]] * 2
    prompts.append(tokenizer("<|Human|>: hi<eoh>\n<|MOSS|>:", add_special_tokens=False)["input_ids"])
    spec = RolloutSpec(max_new_tokens=3)
    ids, lps, masks, replies = sample_with_tools(model, tokenizer, prompts, [frozenset({"Calculate"})] * 2 + [None],
                                                 spec, seed=0, run=lambda text, enabled, max_calls: "No result.")
    for row in range(2):
        assert sum(masks[row]) == 9  # three passes of three sampled tokens
        written = tokenizer.decode([t for t, m in zip(ids[row], masks[row]) if not m], skip_special_tokens=False)
        assert written.startswith("<eot>\n<|Commands|>:") and "<|Results|>: No result.<eor>\n<|MOSS|>:" in written
        assert all(lp == 0.0 for lp, m in zip(lps[row], masks[row]) if not m)
        assert replies[row].startswith("<|Inner Thoughts|>:") and "<|Results|>: No result.<eor>" in replies[row]
    assert masks[2] == [1] * len(ids[2]) and not replies[2].startswith("<|")  # a plain row: one pass, all sampled
    ro = pack(prompts, ids, lps, tokenizer.pad_token_id, masks)
    with torch.no_grad():
        logits = model(input_ids=ro.sequences, attention_mask=ro.attention_mask).logits
    from alignment.losses.logprobs import token_logprobs

    recomputed = token_logprobs(at_responses(logits, ro), response_tokens(ro)) * ro.response_mask
    torch.testing.assert_close(recomputed, ro.logprobs, atol=1e-4, rtol=1e-4)
