"""DPO: the preference losses by hand, no gradient when both replies are the same, ``dpo_step``
lowering its loss, ``dpo.loss`` checked before Ray starts, and ``+experiment=dpo`` end to end."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from alignment.losses.dpo import dpo, ipo, log_ratios, sequence_logps
from alignment.losses.pairwise import bradley_terry, pairwise_loss
from alignment.losses.registry import PREFERENCE_LOSSES
from alignment.models.causal_lm import ArchSpec, build_tiny
from tests.lab import ROOT

ARCH = ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)


def test_losses_by_hand():
    assert {"bradley_terry", "dpo", "ipo"} <= set(PREFERENCE_LOSSES.names())
    h_w, h_l, beta = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5]), 0.5
    loss, st = dpo(h_w, h_l, beta)
    want = sum(-math.log(1 / (1 + math.exp(-beta * d))) for d in (1.0, -3.0, 0.0)) / 3
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert st["reward_accuracy"].item() == pytest.approx(1 / 3)
    assert st["margin"].item() == pytest.approx(beta * (1 - 3 + 0) / 3)
    assert st["chosen_reward"].item() == pytest.approx(beta * (1 - 2 + 0.5) / 3)
    assert st["rejected_reward"].item() == pytest.approx(beta * (0 + 1 + 0.5) / 3)
    loss, st = ipo(h_w, h_l, beta)  # target margin 1 / (2 beta) = 1
    assert loss.item() == pytest.approx(((1 - 1) ** 2 + (-3 - 1) ** 2 + (0 - 1) ** 2) / 3)
    r_w, r_l = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.0, 1.0, 0.3])
    loss, st = bradley_terry(r_w, r_l, 0.1)
    old, acc = pairwise_loss(r_w, r_l)
    assert loss.item() == pytest.approx(old.item()) and st["reward_accuracy"].item() == pytest.approx(acc.item())
    assert PREFERENCE_LOSSES.get("dpo") is dpo
    with pytest.raises(ValueError, match="beta"):
        dpo(h_w, h_l, 0.0)
    # the log-ratios: policy minus reference, the reference a constant
    pc = torch.tensor([-3.0], requires_grad=True)
    h_w, h_l = log_ratios(pc, torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0]))
    assert (h_w.item(), h_l.item()) == (1.0, -1.0)
    assert sequence_logps(torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[1.0, 1.0, 0.0]])).item() == -3.0


def test_reply_sequences_keep_the_reply_start_and_the_prompt_end(world, tokenizer):
    from alignment.sequences import prompt_ids, reply_sequences

    p = world.prompts("train", 1)[0]
    ctx = p.conversation()
    head = prompt_ids(tokenizer, ctx)
    reply = " ".join(["word"] * 200)
    (h, r), = reply_sequences(tokenizer, [ctx], [reply], 10_000)
    assert h == head and len(r) > 50
    (h2, r2), = reply_sequences(tokenizer, [ctx], [reply], 64)
    assert len(h2) + len(r2) == 64 and r2 == r[: len(r2)] and h2 == head[-len(h2):]
    assert len(h2) >= min(len(head), 32)


def test_identical_replies_give_no_gradient(world, tokenizer):
    """With chosen == rejected, h_w == h_l: the sigmoid loss's pulls on the two cancel exactly."""
    from alignment.losses.logprobs import token_logprobs
    from alignment.rollout import pack, response_logits, response_tokens
    from alignment.sequences import reply_sequences

    model = build_tiny(ARCH, tokenizer, seed=0)
    p = world.prompts("train", 2)
    rows = reply_sequences(tokenizer, [q.conversation() for q in p], ["the same reply", "another one"], 128)
    rows = rows + rows  # rows 2, 3 repeat rows 0, 1: chosen == rejected in both pairs
    ro = pack([a for a, _ in rows], [b for _, b in rows], [[0.0] * len(b) for _, b in rows],
              tokenizer.pad_token_id)
    logps = sequence_logps(token_logprobs(response_logits(model, ro), response_tokens(ro)), ro.response_mask)
    ref = logps.detach() - torch.tensor([0.3, -0.2, 0.3, -0.2])  # any reference: both replies share it
    loss, st = dpo(*log_ratios(logps[:2], logps[2:], ref[:2], ref[2:]), 0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-7
    # a different rejected reply does move the model
    model.zero_grad()
    logps = sequence_logps(token_logprobs(response_logits(model, ro), response_tokens(ro)), ro.response_mask)
    loss, _ = dpo(logps[[0]], logps[[1]], 0.1)
    loss.backward()
    assert max(q.grad.abs().max().item() for q in model.parameters() if q.grad is not None) > 1e-6
    assert F.logsigmoid(torch.tensor(0.0)).item() == pytest.approx(-math.log(2))


def test_dpo_step_lowers_the_loss_on_a_fixed_batch(tmp_path, world, tokenizer):
    import random

    from actors.engine import OptimConfig, StrategySpec
    from actors.group import LocalGroup
    from actors.policy import DPOSpec, ModelSpec, PolicyActor
    from actors.reference import ReferenceActor
    from alignment.data.preference import world_groups
    from alignment.world import AIFeedbackLabeller
    from experiments.stages.dpo import dpo_pairs, encode_groups, reference_logps

    sft = tmp_path / "sft"
    build_tiny(ARCH, tokenizer, seed=0).save_pretrained(sft)
    tokenizer.save_pretrained(sft)
    threads = torch.get_num_threads()
    groups = world_groups(world, world.prompts("train", 2), AIFeedbackLabeller(0.05, seed=0), random.Random(0))
    assert [len(g.pairs) for g in groups] == [15, 15]
    seqs = encode_groups(tokenizer, groups, 128)
    ref = LocalGroup(ReferenceActor, "reference", threads)
    ref.call("init_model", str(sft))
    ref_logps = reference_logps(ref, [row for rows in seqs for row in rows], tokenizer.pad_token_id, 5)
    assert len(ref_logps) == 12 and all(v < 0 for v in ref_logps)
    pairs = dpo_pairs(groups, seqs, ref_logps)[:8]
    policy = LocalGroup(PolicyActor, "policy", threads)
    policy.call("init_model", ModelSpec(tokenizer_path=str(sft), path=str(sft)), StrategySpec(),
                OptimConfig(lr=3e-3, total_steps=6, min_lr_ratio=1.0))
    spec = DPOSpec(loss="dpo", beta=0.1)
    stats = [policy.call_sharded("dpo_step", [pairs], spec=spec)[0] for _ in range(6)]
    assert stats[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts at the reference
    assert stats[0]["pairs"] == 8 and stats[0]["sequences"] <= 6 and stats[0]["margin"] == pytest.approx(0.0, abs=1e-4)
    assert stats[-1]["loss"] < stats[0]["loss"] - 0.05
    assert stats[-1]["reward_accuracy"] > 0.5 and stats[-1]["margin"] > 0
    assert {"chosen_logps", "rejected_logps", "lr", "grad_norm"} <= set(stats[-1])
    ipo_stats = policy.call_sharded("dpo_step", [pairs], spec=DPOSpec(loss="ipo", beta=0.1))[0]
    assert math.isfinite(ipo_stats["loss"])


def test_group_batches_keep_a_groups_pairs_together_and_cover_each_pair_once():
    import random

    from experiments.stages.dpo import group_batches

    sizes = [3, 1, 4, 2]
    items = [(g, i) for g, n in enumerate(sizes) for i in range(n)]
    batches = list(group_batches(sizes)(items, 4, random.Random(0)))
    flat = [x for b in batches for x in b]
    assert sorted(flat) == items and [len(b) for b in batches] == [4, 4, 2]
    runs = [g for g, _ in itertools.groupby(g for g, _ in flat)]
    assert sorted(runs) == [0, 1, 2, 3]  # each group's pairs in one run


def test_unknown_loss_fails_before_ray_starts():
    bad = subprocess.run([sys.executable, "run.py", "+experiment=dpo", "dpo.loss=foo"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    err = bad.stderr + bad.stdout
    assert bad.returncode != 0 and "config error: dpo.loss" in err and "ipo" in err and "bradley_terry" in err
    assert "Started a local Ray instance" not in err
    beta = subprocess.run([sys.executable, "run.py", "+experiment=dpo", "dpo.beta=0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert beta.returncode != 0 and "config error: dpo.beta must be > 0" in beta.stderr


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_dpo_presets_compose_and_validate(preset):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import LabConfig, register
    from experiments.validation import validate

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        lab = OmegaConf.to_object(compose(config_name="config", overrides=["+experiment=dpo", f"dpo={preset}"]))
    assert isinstance(lab, LabConfig) and lab.stage == "dpo" and not lab.eval.evaluate_init
    assert lab.dpo.loss == "dpo" and lab.dpo.beta == pytest.approx(0.1)
    assert lab.dpo.trainer.lr < lab.trainer.lr  # DPO steps far more gently than SFT
    validate(lab)
    lab.dpo.loss = "ipo"
    validate(lab)
    lab.dpo.loss = "foo"
    with pytest.raises(ValueError, match=r"dpo\.loss.*bradley_terry, dpo, ipo"):
        validate(lab)
