"""Quark's maths on hand-made cases: the pool, re-bucketing over the pool, the per-token KL term
and Quark's loss, the reference's alignment with the tagged tokens, and the settings' checks."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from alignment.chat_format import Conversation, Turn, meta_instruction
from alignment.loss_mask import encode
from alignment.losses.quark import masked_token_kl, quark_loss, token_kl
from alignment.quark import (
    Pool,
    PoolRecord,
    align_reference,
    draw_tags,
    rebucket,
    round_summary,
    subset_size,
    tagged_pool,
    train_subset,
)
from experiments.config import register
from experiments.validation import validate

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register()


def _conv(reply: str) -> Conversation:
    return Conversation(meta_instruction(), (Turn("hi", "hello"), Turn("What is your name?", reply)))


def _records(scores: list[float], k: int) -> list[PoolRecord]:
    return [PoolRecord(_conv(f"reply {k}.{i}"), s, k) for i, s in enumerate(scores)]


# the pool


def test_the_pool_holds_the_sft_data_and_every_round_in_order():
    pool = Pool(_records([0.1, 0.5, 0.9], 1))
    assert len(pool) == 3 and pool.rounds() == [1] and pool.counts() == {1: 3}
    pool.add(_records([0.2, 0.7], 2))
    pool.add(_records([0.3], 3))
    assert len(pool) == 6 and pool.rounds() == [1, 2, 3] and pool.counts() == {1: 3, 2: 2, 3: 1}
    assert pool.scores() == [0.1, 0.5, 0.9, 0.2, 0.7, 0.3]  # the order added
    assert [r.reply for r in pool.of_round(2)] == ["reply 2.0", "reply 2.1"]
    pool.add([])  # nothing to add: nothing changes
    assert len(pool) == 6


def test_a_round_is_added_once_and_in_order():
    pool = Pool(_records([0.1, 0.2], 1) + _records([0.3], 2))  # built from several rounds: grouped by round
    assert pool.counts() == {1: 2, 2: 1}
    with pytest.raises(ValueError, match="round 2 added after round 2"):
        pool.add(_records([0.4], 2))
    with pytest.raises(ValueError, match="one round at a time"):
        pool.add(_records([0.4], 3) + _records([0.5], 4))
    assert len(pool) == 3  # a refused round adds nothing


def test_a_record_survives_json():
    plugin = Conversation(meta_instruction(), (Turn("2+2?", "4", "I should add.", 'Calculate("2+2")',
                                                     'Calculate("2+2") => "4"', quality=None),))
    for rec in (PoolRecord(_conv("I am MOSS."), 0.25, 1), PoolRecord(plugin, -1.5, 3)):
        assert PoolRecord.from_json(rec.to_json()) == rec


# re-bucketing over the whole pool


def test_rebucketing_uses_quantiles_of_the_whole_pool():
    pool = Pool(_records([0.1, 0.5, 0.9], 1))
    tags, edges = rebucket(pool, 3)  # tags 0, 50, 100
    assert tags == [0, 50, 100] and edges == [0.5, 0.9]
    # six scores, three buckets: sorted 0.1 0.2 | 0.3 0.5 | 0.7 0.9 (buckets start at ranks 6*1//3=2, 6*2//3=4)
    pool.add(_records([0.2, 0.7, 0.3], 2))
    tags, edges = rebucket(pool, 3)
    assert tags == [0, 50, 100, 0, 100, 50]
    assert edges == [0.3, 0.7]  # the smallest score of buckets 1 and 2


def test_a_better_round_moves_the_old_records_down():
    pool = Pool(_records([0.1, 0.5, 0.9], 1))
    pool.add(_records([0.95, 0.97, 0.99], 2))
    # sorted 0.1 0.5 | 0.9 0.95 | 0.97 0.99: the SFT reply at 0.9 was tagged 100 alone, now 50
    tags, edges = rebucket(pool, 3)
    assert tags == [0, 0, 50, 50, 100, 100] and edges == [0.9, 0.97]


def test_ties_share_a_bucket_over_the_pool():
    pool = Pool(_records([1.0, 1.0, 1.0], 1))
    pool.add(_records([2.0, 3.0, 3.0], 2))
    # sorted 1 1 1 2 3 3, buckets start at ranks 2 and 4: the tie of 1s starts at rank 0 (bucket 0),
    # 2 at rank 3 (bucket 1), the 3s at rank 4 (bucket 2)
    tags, edges = rebucket(pool, 3)
    assert tags == [0, 0, 0, 50, 100, 100] and edges == [2.0, 3.0]
    spanning = Pool(_records([1.0, 1.0, 1.0, 1.0], 1))
    spanning.add(_records([2.0, 3.0], 2))
    with pytest.warns(UserWarning, match=r"tags \[50\] have no training example"):
        tags, edges = rebucket(spanning, 3)
    assert tags == [0, 0, 0, 0, 100, 100] and edges == [2.0, 2.0]  # the empty bucket repeats the next edge
    with pytest.raises(ValueError, match="empty pool"):
        rebucket(Pool(), 3)


def test_the_tagged_pool_puts_each_tag_before_its_reply():
    pool = Pool(_records([0.1, 0.9], 1))
    tagged = tagged_pool(pool, [0, 100])
    assert [c.turns[-1].quality for c in tagged] == [0, 100]
    assert [c.turns[-1].moss for c in tagged] == ["reply 1.0", "reply 1.1"]
    assert tagged[0].turns[0] == pool.records[0].conversation.turns[0]  # earlier turns untouched
    with pytest.raises(ValueError):
        tagged_pool(pool, [0])


def test_exploration_tags_cover_the_buckets_evenly():
    tags = draw_tags(14, 6, random.Random(0))
    counts = {t: tags.count(t) for t in (0, 20, 40, 60, 80, 100)}
    assert len(tags) == 14 and sorted(counts.values()) == [2, 2, 2, 2, 3, 3]
    assert draw_tags(14, 6, random.Random(0)) == tags  # the same seed, the same tags


def test_a_round_trains_on_a_subset_of_the_pool():
    assert subset_size(10, -1) == 10 and subset_size(10, 4) == 4 and subset_size(3, 4) == 3
    assert train_subset(5, -1, random.Random(0)) == [0, 1, 2, 3, 4]
    assert train_subset(5, 9, random.Random(0)) == [0, 1, 2, 3, 4]
    keep = train_subset(100, 10, random.Random(1))
    assert len(keep) == 10 == len(set(keep)) and keep == sorted(keep) and all(0 <= i < 100 for i in keep)


# the per-token KL term


def test_token_kl_by_hand():
    # p = softmax(0, ln 3) = (1/4, 3/4), q = (1/2, 1/2):
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    kl = token_kl(logits, ref)
    expected = 0.75 * math.log(3.0) - math.log(2.0)
    assert kl.item() == pytest.approx(expected, abs=1e-6)
    kl.sum().backward()
    # d KL / d z_i = p_i (log p_i - log q_i - KL)
    grad = [0.25 * (math.log(0.25) - math.log(0.5) - expected), 0.75 * (math.log(0.75) - math.log(0.5) - expected)]
    assert logits.grad[0].tolist() == pytest.approx(grad, abs=1e-6)
    assert grad[0] == pytest.approx(-grad[1])  # the logits' gradient sums to zero


def test_token_kl_is_zero_at_the_reference_and_not_symmetric():
    z = torch.tensor([[0.3, -1.2, 2.0]], requires_grad=True)
    kl = token_kl(z, torch.log_softmax(z.detach(), -1))
    assert kl.item() == pytest.approx(0.0, abs=1e-6)
    kl.sum().backward()
    assert z.grad.abs().max().item() < 1e-6
    p, q = torch.tensor([[0.0, math.log(3.0)]]), torch.log(torch.tensor([[0.5, 0.5]]))
    # KL(q || p) = 1/2 ln(2) + 1/2 ln(2/3) = ln 2 - 1/2 ln 3, not KL(p || q)
    assert token_kl(torch.log(torch.tensor([[0.5, 0.5]])), torch.log_softmax(p, -1)).item() == pytest.approx(
        math.log(2.0) - 0.5 * math.log(3.0), abs=1e-6)
    assert token_kl(p, q).item() != pytest.approx(math.log(2.0) - 0.5 * math.log(3.0), abs=1e-3)


def test_masked_kl_averages_over_the_reply_tokens_only():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, -5.0], [0.0, 0.0]], requires_grad=True)
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]))
    mask = torch.tensor([1.0, 0.0, 1.0])  # the second token is not a reply token
    kl = masked_token_kl(logits, ref, mask)
    # rows 1 and 3: (3/4 ln 3 - ln 2) and 0, averaged over the two
    assert kl.item() == pytest.approx((0.75 * math.log(3.0) - math.log(2.0)) / 2, abs=1e-6)
    kl.backward()
    assert logits.grad[1].tolist() == [0.0, 0.0]  # a masked token gets no gradient
    assert masked_token_kl(logits, ref, torch.zeros(3)).item() == 0.0


def test_quark_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    target, on = torch.tensor([1]), torch.tensor([1.0])
    kl = 0.75 * math.log(3.0) - math.log(2.0)
    nll = -math.log(0.75)
    ent = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    loss, st = quark_loss(logits, target, ref, on, kl_coef=0.0)
    assert loss.item() == pytest.approx(nll, abs=1e-6)  # kl_coef 0: PAT's loss
    loss, st = quark_loss(logits, target, ref, on, kl_coef=0.5)
    assert loss.item() == pytest.approx(nll + 0.5 * kl, abs=1e-6)
    assert st["nll"].item() == pytest.approx(nll, abs=1e-6) and st["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert st["entropy"].item() == pytest.approx(ent, abs=1e-6)
    loss, _ = quark_loss(logits, target, ref, on, kl_coef=0.5, entropy_coef=0.1)
    assert loss.item() == pytest.approx(nll + 0.5 * kl - 0.1 * ent, abs=1e-6)


def test_the_kl_term_pulls_towards_the_reference():
    """A few gradient steps on the KL term alone move the policy's distribution to the reference's."""
    z = torch.tensor([[2.0, 0.0, -2.0]], requires_grad=True)
    ref = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    first = token_kl(z, ref).item()
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        quark_loss(z, torch.tensor([0]), ref, torch.ones(1), kl_coef=1.0)[0].backward()  # nll pulls to token 0
        opt.step()
    with_nll = torch.softmax(z, -1)[0, 0].item()
    assert token_kl(z, ref).item() < first and 0.2 < with_nll < 1.0


# the reference laid against the tagged tokens


def test_the_reference_pairs_with_the_tagged_tokens_from_the_end():
    ref = torch.log(torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]))
    rows, mask = align_reference(4, ref)  # the tagged encoding kept one more labelled token
    assert mask.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert torch.equal(rows[1:], ref) and torch.allclose(rows[0].exp(), torch.tensor([0.5, 0.5]))
    rows, mask = align_reference(2, ref)  # truncation cut the tagged one shorter
    assert mask.tolist() == [1.0, 1.0] and torch.equal(rows, ref[1:])
    rows, mask = align_reference(0, ref)
    assert rows.shape == (0, 2) and mask.numel() == 0


def test_the_tag_leaves_the_labelled_tokens_unchanged(tokenizer):
    """The tag sits in the MOSS prefix, which carries no loss: the policy's labelled tokens (tagged) and
    the reference's (untagged) are the same tokens, so align_reference pairs them one to one."""
    conv = _conv("My name is MOSS, an AI assistant.")
    plain, tagged = encode(conv, tokenizer), encode(tagged_pool(Pool([PoolRecord(conv, 1.0, 1)]), [60])[0], tokenizer)
    assert len(tagged.input_ids) > len(plain.input_ids)
    labelled = [[i for i, m in zip(e.input_ids[1:], e.loss_mask[1:]) if m] for e in (plain, tagged)]
    assert labelled[0] == labelled[1] and labelled[0]


def test_round_summary_names_the_keys_per_round():
    points = [{"round": 1, "gold": 0.5, "pm": 1.0, "kl": 4.0}, {"round": 2, "gold": None, "pm": 1.5, "kl": 2.0}]
    assert round_summary(points) == {"1": {"gold": 0.5, "pm_score": 1.0, "kl": 4.0},
                                     "2": {"gold": None, "pm_score": 1.5, "kl": 2.0}}


# the settings


@pytest.mark.parametrize("override, message", [
    ("quark.rounds=1", "quark.rounds must be at least 2"),
    ("quark.samples_per_prompt=0", "quark.samples_per_prompt must be at least 1"),
    ("quark.kl_coef=-0.1", "quark.kl_coef must be >= 0"),
    ("quark.examples_per_round=0", "quark.examples_per_round: 0"),
    ("quark.top_p=0", "quark.top_p in"),
    ("quark.trainer.batch_size=0", "quark.trainer.batch_size must be at least 1"),
])
def test_bad_quark_settings_fail_before_anything_starts(override, message):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        lab = OmegaConf.to_object(compose(config_name="config", overrides=["+experiment=quark", override]))
    with pytest.raises(ValueError, match=message):
        validate(lab)


def test_compare_knows_quark_and_refuses_an_unknown_method():
    from experiments.preflight import check_methods

    check_methods(["quark", "pat", "ppo"])
    with pytest.raises(ValueError, match="compare.methods: 'sac'; choose one of quark, pat"):
        check_methods(["quark", "sac"])


def test_the_quark_preset_composes():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        lab = OmegaConf.to_object(compose(config_name="config", overrides=["+experiment=quark"]))
    validate(lab)
    assert lab.stage == "quark" and lab.quark.rounds == 3 and lab.quark.kl_coef == pytest.approx(0.05)


def test_the_paper_preset_composes_with_a_real_checkpoint():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        lab = OmegaConf.to_object(compose(config_name="config", overrides=[
            "+experiment=quark", "quark=paper", "pat=paper", "model=pretrained", "model.path=/models/x"]))
    validate(lab)
    q = lab.quark
    assert (q.kl_coef, q.entropy_coef, q.trainer.lr, q.trainer.batch_size) == (0.05, 0.06, 1e-5, 128)
    assert q.trainer.lr < lab.pat.trainer.lr * 2  # rounds continue from PAT's model, no faster than it trained


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_compare_builds_pat_before_quark_and_hands_it_over(monkeypatch, max_parallel):
    """``compare`` trains Quark on the PAT model it trains (never twice, never a deadlock with one
    worker), and builds PAT itself for Quark when PAT is not compared."""
    from types import SimpleNamespace

    from experiments.commands import compare
    from experiments.stages.chain import Stage

    built: list[str] = []

    def stage(name: str, needs: tuple[str, ...]) -> Stage:
        def build(ctx, *ups):
            built.append(name)
            return f"{name}({','.join(map(str, ups))})"
        return Stage(name, needs, None, build, run=lambda ctx: {}, product=f"{name} model")

    fake = {"pat": stage("pat", ("sft", "pm")), "quark": stage("quark", ("sft", "pm", "pat")),
            "dpo": stage("dpo", ("sft",))}
    monkeypatch.setattr(compare, "STAGES", fake)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        lab = OmegaConf.to_object(compose(config_name="config", overrides=[
            "+experiment=compare", f"compare.max_parallel={max_parallel}"]))
    ctx = SimpleNamespace(cfg=lab, nice={}, for_method=lambda m: ctx, widen=lambda *a: None)
    made = compare.train_all(ctx, "sft", "pm", ["quark", "pat", "dpo"])
    assert made["quark"] == "quark(sft,pm,pat(sft,pm))" and built.count("pat") == 1
    built.clear()
    made = compare.train_all(ctx, "sft", "pm", ["quark"])
    assert made == {"quark": "quark(sft,pm,pat(sft,pm))"} and built == ["pat", "quark"]
