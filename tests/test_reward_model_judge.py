"""The reward-model judge: checking and loading a local one-label classifier, its chat text,
batched scoring, and the actor under ``LocalGroup`` and ``RoleGroup``."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from alignment.chat_format import PLAIN_META, Conversation, Turn
from alignment.judges.reward_model import check_reward_model, load_reward_model, rm_text, score_texts

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<eom>\n{% endfor %}"


def tiny_config(tokenizer, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, **kw)


@pytest.fixture(scope="module")
def rm_dir(tokenizer, tmp_path_factory):
    """A tiny one-label Llama classifier and a chat-templated copy of the session tokenizer."""
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1))
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores of order 1, so that texts differ clearly
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loaded(rm_dir):
    return load_reward_model(rm_dir)


def conv(*turns: tuple[str, str]) -> Conversation:
    return Conversation(PLAIN_META, tuple(Turn(h, m) for h, m in turns))


ITEMS = [
    (conv(("What is the capital of France?", "old reply")), "Paris."),
    (conv(("Hello", "Hi there, how can I help?"), ("Tell me a story about a fox.", "x")),
     "Once upon a time a quick brown fox jumped over the lazy dog and ran far away."),
    (conv(("Add two and two.", "")), "Four."),
    (conv(("Name a colour.", "")), "Blue, or maybe green, or red; there are many colours to pick from."),
    (conv(("Why is the sky blue?", "")), "Rayleigh scattering."),
]


def direct(model, tokenizer, ids: list[int]) -> float:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_check_accepts_a_one_label_classifier_and_rejects_others(rm_dir, tokenizer, tmp_path):
    check_reward_model(rm_dir)
    check_reward_model(str(rm_dir))

    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="not a directory") as e:
        check_reward_model(missing)
    assert str(missing) in str(e.value)

    lm = tmp_path / "lm"
    LlamaForCausalLM(tiny_config(tokenizer)).save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    with pytest.raises(ValueError, match="ForSequenceClassification") as e:
        check_reward_model(lm)
    assert str(lm) in str(e.value)

    two = tmp_path / "two_labels"
    shutil.copytree(rm_dir, two)
    config = json.loads((two / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    (two / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="2 labels") as e:
        check_reward_model(two)
    assert str(two) in str(e.value)

    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(rm_dir, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="tokenizer") as e:
        check_reward_model(no_tok)
    assert str(no_tok) in str(e.value)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(ValueError, match="config.json") as e:
        check_reward_model(no_config)
    assert str(no_config) in str(e.value)


def test_load_sets_padding_and_eval_mode(loaded, tokenizer):
    model, tok = loaded
    assert not model.training
    assert model.config.num_labels == 1
    assert tok.pad_token_id == tokenizer.pad_token_id == model.config.pad_token_id
    assert tok.chat_template == TEMPLATE
    assert tokenizer.chat_template is None  # the session fixture is untouched


def test_rm_text_uses_the_chat_template_without_the_meta_instruction(loaded):
    _, tok = loaded
    context = conv(("Hello", "Hi there."), ("What is 2+2?", "old reply, replaced"))
    text = rm_text(tok, context, "Four.")
    assert text == "[user] Hello<eom>\n[assistant] Hi there.<eom>\n[user] What is 2+2?<eom>\n[assistant] Four.<eom>\n"
    assert "MOSS" not in text


def test_rm_text_falls_back_to_a_plain_transcript(tokenizer):
    assert tokenizer.chat_template is None
    context = conv(("Hello", "Hi there."), ("What is 2+2?", "old reply, replaced"))
    assert rm_text(tokenizer, context, "Four.") == (
        "User: Hello\n\nAssistant: Hi there.\n\nUser: What is 2+2?\n\nAssistant: Four.")
    with pytest.raises(ValueError):
        rm_text(tokenizer, Conversation(PLAIN_META, ()), "Four.")


def test_score_texts_matches_one_text_forward_passes_in_input_order(loaded):
    model, tok = loaded
    texts = [rm_text(tok, c, r) for c, r in ITEMS]
    ids = [tok(t)["input_ids"] for t in texts]
    assert len({len(i) for i in ids}) == len(ids)  # lengths differ: batches are sorted and padded
    expected = [direct(model, tok, i) for i in ids]
    assert max(expected) - min(expected) > 0.1  # distinct scores: a permutation would show
    for batch_size in (1, 2, 16):
        got = score_texts(model, tok, texts, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-5)
    assert score_texts(model, tok, []) == []


def test_score_texts_truncates_from_the_left(loaded):
    model, tok = loaded
    text = rm_text(tok, *ITEMS[1])
    ids = tok(text)["input_ids"]
    assert len(ids) > 12
    got = score_texts(model, tok, [text, rm_text(tok, *ITEMS[0])], max_length=8, batch_size=2)
    assert got[0] == pytest.approx(direct(model, tok, ids[-8:]), abs=1e-5)
    assert got[0] != pytest.approx(direct(model, tok, ids[:8]), abs=1e-3)
    assert got[0] != pytest.approx(direct(model, tok, ids), abs=1e-3)


def expected_scores(loaded) -> list[float]:
    model, tok = loaded
    return [direct(model, tok, tok(rm_text(tok, c, r))["input_ids"]) for c, r in ITEMS]


def test_actor_in_a_local_group(rm_dir, loaded):
    from actors.group import LocalGroup
    from actors.reward_model import RewardModelActor

    group = LocalGroup(RewardModelActor, "reward_model")
    try:
        [n] = group.call("init_model", str(rm_dir))
        assert n == sum(p.numel() for p in loaded[0].parameters())
        got = group.map_sharded("score", ITEMS, max_length=256, batch_size=2)
        assert got == pytest.approx(expected_scores(loaded), abs=1e-5)
    finally:
        group.shutdown()


def test_actor_in_a_ray_group_shards_and_keeps_order(ray_address, rm_dir, loaded):
    from actors.group import RoleGroup
    from actors.reward_model import RewardModelActor
    from experiments.config import ActorResources

    group = RoleGroup(RewardModelActor, "reward_model", ActorResources(num_actors=2, num_cpus=0.5), num_threads=1)
    try:
        counts = group.call("init_model", str(rm_dir))
        assert counts == [sum(p.numel() for p in loaded[0].parameters())] * 2
        got = group.map_sharded("score", ITEMS, max_length=256, batch_size=2)
        assert got == pytest.approx(expected_scores(loaded), abs=1e-5)
    finally:
        group.shutdown()
