"""PAT bucketing and tagging, the pairwise loss, and win-rate maths on hand-made cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment.chat_format import Conversation, Turn, meta_instruction
from alignment.loss_mask import encode
from alignment.losses.pairwise import pairwise_loss
from alignment.pat import assign_buckets, bucket_tags, quantile_edges, tag_conversation, tag_scores
from alignment.statistics.winrate import outcomes, spearman, win_rate


def test_bucket_tags_are_evenly_spaced():
    assert bucket_tags(6) == [0, 20, 40, 60, 80, 100]
    assert bucket_tags(5) == [0, 25, 50, 75, 100]
    assert bucket_tags(2) == [0, 100]
    with pytest.raises(ValueError):
        bucket_tags(1)


def test_quantile_buckets_have_equal_counts():
    scores = [float(i) for i in range(60)]
    tags, edges = tag_scores(scores, 6)
    assert edges == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert [tags.count(t) for t in bucket_tags(6)] == [10] * 6
    assert tags[0] == 0 and tags[-1] == 100 and tags[9] == 0 and tags[10] == 20


def test_boundaries_and_ties_share_a_bucket():
    assert assign_buckets([0.9, 1.0, 1.1, 2.0, 5.0], [1.0, 2.0]) == [0, 1, 1, 2, 2]
    scores = [1.0, 1.0, 1.0, 1.0, 2.0, 3.0]
    tags, _ = tag_scores(scores, 3)
    assert len({tags[i] for i in range(4)}) == 1  # equal scores never split across buckets
    assert quantile_edges([3.0, 1.0, 2.0], 3) == [2.0, 3.0]
    # a tie larger than several buckets stays where it starts: the worst 90% are not tagged 100
    tags, _ = tag_scores([0.0] * 90 + [1.0] * 10, 6)
    assert set(tags[:90]) == {0} and set(tags[90:]) == {100}
    tags, _ = tag_scores([0.0] * 6 + [float(i) for i in range(1, 7)], 6)
    assert tags[:6] == [0] * 6 and tags[-1] == 100


def test_fixed_thresholds_rule():
    tags, edges = tag_scores([-1.0, 0.0, 0.5, 2.0], 3, rule="fixed", thresholds=[0.0, 1.0])
    assert tags == [0, 50, 50, 100] and edges == [0.0, 1.0]
    with pytest.raises(ValueError, match="thresholds"):
        tag_scores([1.0], 3, rule="fixed", thresholds=[0.0])
    with pytest.raises(ValueError, match="unknown bucketing rule"):
        tag_scores([1.0], 3, rule="median")
    with pytest.raises(ValueError, match="ascending"):
        assign_buckets([1.0], [2.0, 1.0])


def test_tag_sits_after_the_moss_prefix_and_carries_no_loss(tokenizer):
    conv = Conversation(meta_instruction(), (Turn("hi", "earlier"), Turn("What is your name?", "I am MOSS.")))
    tagged = tag_conversation(conv, 60)
    assert tagged.turns[-1].quality == 60 and tagged.turns[0].quality is None
    enc = encode(tagged, tokenizer)
    text = tokenizer.decode(enc.input_ids)
    assert text.endswith("<|MOSS|>: <quality: 60> I am MOSS.<eom>\n")
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    moss = len(tokens) - 1 - tokens[::-1].index("<|MOSS|>")
    tag_ids = tokenizer(": <quality: 60>", add_special_tokens=False)["input_ids"]
    assert enc.input_ids[moss + 1: moss + 1 + len(tag_ids)] == tag_ids
    assert not any(enc.loss_mask[moss: moss + 1 + len(tag_ids)])
    assert all(enc.loss_mask[moss + 1 + len(tag_ids):-1])  # the reply and <eom>; not the final newline


def test_pairwise_loss_values_and_separable_case():
    loss, acc = pairwise_loss(torch.tensor([0.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(0.6931, abs=1e-4) and acc.item() == 0.0
    loss, acc = pairwise_loss(torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((0.126928 + 2.126928) / 2, abs=1e-4) and acc.item() == 0.5
    # a linear scorer learns a separable toy preference to full accuracy
    torch.manual_seed(0)
    x_w, x_l = torch.randn(200, 4) + torch.tensor([1.0, 0, 0, 0]), torch.randn(200, 4) - torch.tensor([1.0, 0, 0, 0])
    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5)
    for _ in range(200):
        loss, acc = pairwise_loss(x_w @ w, x_l @ w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert acc.item() > 0.9 and loss.item() < 0.3


def test_win_rate_on_hand_made_outcomes():
    res = outcomes([3, 2, 1, 5], [1, 2, 4, 5.05], tie_margin=0.1)
    assert res == [1, 0, -1, 0]
    wr = win_rate(res, n_boot=500)
    assert (wr.win, wr.tie, wr.lose, wr.win_rate) == (0.25, 0.5, 0.25, 0.5)
    assert wr.ci_low <= 0.5 <= wr.ci_high and wr.n == 4
    all_win = win_rate([1] * 30)
    assert all_win.win_rate == 1.0 and all_win.ci_low == all_win.ci_high == 1.0
    wide, narrow = win_rate([1, -1] * 10, seed=1), win_rate([1, -1] * 500, seed=1)
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low
    with pytest.raises(ValueError):
        outcomes([1], [1, 2])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) == 0.0
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_comparison_groups_from_files_and_world(world):
    import random

    from alignment.data.loaders import MultiResponse, PreferencePair
    from alignment.data.preference import multi_response_groups, pair_groups, world_groups
    from alignment.world import AIFeedbackLabeller

    ctx = Conversation(meta_instruction(), (Turn("q", ""),))
    assert pair_groups([PreferencePair(ctx, "good", "bad")])[0].pairs == ((0, 1),)
    groups = multi_response_groups([MultiResponse(ctx, ("a", "b", "c"), (1.0, 3.0, 1.0))])
    assert set(groups[0].pairs) == {(1, 0), (1, 2)}  # the tie a=c gives no pair
    assert multi_response_groups([MultiResponse(ctx, ("a", "b"), (2.0, 2.0))]) == []
    wg = world_groups(world, world.prompts("train", 3), AIFeedbackLabeller(0.05, 0), random.Random(0))
    assert [len(g.candidates) for g in wg] == [6, 6, 6] and all(len(g.pairs) == 15 for g in wg)


def test_sft_samples_join_the_candidates_without_changing_the_sources_labels(world):
    import random

    from alignment.data.preference import world_groups
    from alignment.world import AIFeedbackLabeller

    prompts = world.prompts("train", 4)
    plain = world_groups(world, prompts, AIFeedbackLabeller(0.05, 0), random.Random(0))
    perfect = world.candidates(prompts[0], random.Random(1))[-1]
    extra = [["Whatever. no idea"], [perfect]]  # the first two prompts get a seventh candidate
    mixed = world_groups(world, prompts, AIFeedbackLabeller(0.05, 0), random.Random(0), extra,
                         AIFeedbackLabeller(0.001, 1))
    assert [len(g.candidates) for g in mixed] == [7, 7, 6, 6]
    assert [len(g.pairs) for g in mixed] == [21, 21, 15, 15]
    for a, b in zip(plain, mixed):  # the sources' candidates and labels are untouched
        assert b.candidates[:6] == a.candidates and b.pairs[:15] == a.pairs
    # the new candidate's pairs come from the (here near-noiseless) extra labeller: the gibberish
    # loses to every source reply the gold judge scores above zero
    g = mixed[0]
    for k in range(6):
        if world.judge(prompts[0], g.candidates[k]) > 0:
            assert (k, 6) in g.pairs[15:]
    assert all(6 in pair for pair in g.pairs[15:])


@pytest.mark.parametrize("scores", [
    [1.0, 2.0, 2.0, 2.0, 3.0, 4.0],  # a tie across an edge
    [0.5] * 7 + [0.25, 0.75] * 3 + [1.0],  # bf16-like: few distinct values, large ties
    [0.0] * 90 + [1.0] * 10,  # a tie spanning several buckets
    [3.0] * 12,  # one value
])
def test_stored_edges_reproduce_the_training_tags(scores):
    import warnings

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        tags, edges = tag_scores(scores, 6)
    assert [bucket_tags(6)[b] for b in assign_buckets(scores, edges)] == tags
    assert edges == sorted(edges)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.125, 0.5, 2.0]), min_size=1, max_size=60),
       st.integers(min_value=2, max_value=8))
def test_edges_reproduce_tags_on_any_ties(scores, n):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tags, edges = tag_scores(scores, n)
    assert [bucket_tags(n)[b] for b in assign_buckets(scores, edges)] == tags


def test_an_empty_tag_is_warned_about():
    with pytest.warns(UserWarning, match=r"PAT tags \[20, 40, 60, 80\] have no training example"):
        tag_scores([0.0] * 90 + [1.0] * 10, 6)
    with pytest.warns(UserWarning, match=r"PAT tags \[100\]"):
        tag_scores([-1.0, 0.0, 0.5], 3, rule="fixed", thresholds=[0.0, 1.0])
