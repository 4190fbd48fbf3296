"""model.chat_format=template: a pretrained chat model trained and sampled in its own chat template.

On a tiny random Qwen2 whose tokenizer has a ChatML template and none of MOSS's special tokens: the
loss masks cover the assistant replies (and the end-of-turn token that closes each) only, PAT's
quality tag opens the reply as the program's text, the generation prompt is the head of the
rendered conversation (what sampling starts from is what training saw), and a sampled reply reads
back through the format.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from alignment.chat_format import Conversation, FormatError, Turn, meta_instruction
from alignment.loss_mask import DEFAULT_POLICY, LossPolicy, encode, encode_many
from alignment.models.tokenizer import load_tokenizer
from alignment.sequences import prompt_ids, reply_sequences, scored_sequences, written_lengths
from alignment.template_format import (
    format_of,
    prompt_text,
    reply_of,
    template_segments,
)
from tests.builders import chatml_tokenizer, save_chatml_qwen2

body = st.text(st.characters(blacklist_characters="<\u2063", blacklist_categories=("Cs",)), min_size=1, max_size=30)
turns = st.builds(Turn, human=body, moss=body, quality=st.none() | st.integers(0, 100))
convs = st.builds(Conversation, meta_instruction=st.just(meta_instruction()),
                  turns=st.lists(turns, min_size=1, max_size=3).map(tuple))


@pytest.fixture(scope="module")
def qwen_dir(world, tmp_path_factory):
    tok = chatml_tokenizer(world.corpus(300))
    return save_chatml_qwen2(tmp_path_factory.mktemp("qwen2-chatml"), tok)


@pytest.fixture(scope="module")
def tok(qwen_dir):
    return load_tokenizer(str(qwen_dir), "template")


def test_template_tokenizer_gains_no_moss_token_and_keeps_its_format(tok, qwen_dir, tmp_path):
    plain = load_tokenizer(str(qwen_dir))  # unmarked: the MOSS format, its special tokens added
    assert format_of(plain) == "moss" and "<eom>" in plain.get_vocab()
    assert format_of(tok) == "template" and "<eom>" not in tok.get_vocab() and "<|MOSS|>" not in tok.get_vocab()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) == len(AutoTokenizer.from_pretrained(qwen_dir))  # not one token added
    tok.save_pretrained(tmp_path)
    assert format_of(load_tokenizer(str(tmp_path))) == "template"  # a saved checkpoint keeps speaking it


def test_masks_cover_the_replies_and_their_end_of_turn_only(tok):
    conv = Conversation(meta_instruction(), (Turn("What is two plus two?", "Four."),
                                             Turn("And three plus three?", "Six.", quality=70)))
    enc = encode(conv, tok)
    assert tok.decode(enc.input_ids) == tok.apply_chat_template(
        [{"role": "system", "content": conv.meta_instruction},
         {"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."},
         {"role": "user", "content": "And three plus three?"},
         {"role": "assistant", "content": "<quality: 70>\nSix."}], tokenize=False)
    masked = tok.decode([i for i, m in zip(enc.input_ids, enc.loss_mask) if m])
    assert masked == "Four.<|im_end|>Six.<|im_end|>"
    last_only = encode(conv, tok, LossPolicy.from_names(["moss"], last_turn_only=True))
    assert tok.decode([i for i, m in zip(last_only.input_ids, last_only.loss_mask) if m]) == "Six.<|im_end|>"
    with_human = encode(conv, tok, LossPolicy.from_names(["moss", "human"]))
    assert sum(with_human.loss_mask) > sum(enc.loss_mask)


def test_quality_tag_opens_the_reply_as_the_programs_text(tok):
    conv = Conversation(meta_instruction(), (Turn("Say hi.", "Hi there.", quality=40),))
    segs = template_segments(conv, tok)
    tag = next(i for i, s in enumerate(segs) if s.text == "<quality: 40>\n")
    assert not segs[tag].model_written and segs[tag - 1].text.endswith("<|im_start|>assistant\n")
    assert segs[tag + 1].model_written and segs[tag + 1].text == "Hi there.<|im_end|>"
    assert prompt_text(tok, conv, 40) == "".join(s.text for s in segs[:tag + 1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=convs)
def test_prompt_plus_reply_is_the_rendered_conversation(tok, conv):
    """Round trip: the last reply's generation prompt and its written body (the tokens sampling and
    the policy's log-probs see) are the tokens SFT trains on, and a generated reply reads back."""
    last = conv.turns[-1]
    enc = encode(conv, tok, LossPolicy.from_names(["moss"], last_turn_only=True))
    head, reply = reply_sequences(tok, [conv], [last.moss], 10_000)[0]
    assert head == prompt_ids(tok, conv)
    tail = tok("\n", add_special_tokens=False)["input_ids"]  # the template's newline after the last turn
    assert enc.input_ids == prompt_ids(tok, conv, last.quality) + reply + tail
    assert enc.loss_mask == [0] * (len(enc.input_ids) - len(reply) - 1) + [1] * len(reply) + [0]
    assert written_lengths(tok, [last.moss]) == [len(reply)]
    generated = tok.decode(reply + [tok.pad_token_id] * 3, skip_special_tokens=False)
    normalizer = tok.backend_tokenizer.normalizer  # the tokenizer's own Unicode normalization (NFKC)
    written = normalizer.normalize_str(last.moss) if normalizer is not None else last.moss
    assert reply_of(tok, generated) == written.strip()
    assert scored_sequences(tok, [conv], [last.moss], 10_000)[0] == head + reply


def test_tool_turns_stay_moss_only(tok):
    conv = Conversation(meta_instruction(), (Turn("2+2?", "4", inner_thoughts="add", commands="Calculate(2+2)"),))
    with pytest.raises(FormatError, match="chat_format=moss"):
        encode_many([conv], tok, DEFAULT_POLICY)


def test_a_tokenizer_without_a_template_is_refused(world, tmp_path):
    from alignment.models.tokenizer import train_bpe

    train_bpe(world.corpus(50), 300).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(str(tmp_path), "template")


def test_sft_on_the_template_trains_only_on_replies(tok, qwen_dir, world):
    """A few SFT steps on the tiny Qwen2 in its template: the loss falls, and changing a user turn or
    the system prompt changes no gradient target (the label tensor is -100 outside the replies)."""
    from alignment.data.batching import collate
    from alignment.losses.lm import masked_lm_loss
    from alignment.models.causal_lm import load_causal_lm
    from alignment.models.shared_prefix import lm_hidden_states, output_head

    model = load_causal_lm(str(qwen_dir), tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)  # no row added: no new token
    examples = encode_many([p.conversation("A short reply.") for p in world.prompts("train", 8)], tok)
    batch = collate(examples, tok.pad_token_id)
    labelled = tok.decode(batch["labels"][0][batch["labels"][0] >= 0])
    assert labelled == "A short reply.<|im_end|>"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        hidden = lm_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        loss, _ = masked_lm_loss(hidden, batch["labels"], output_head(model))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


def test_evaluation_prompts_each_model_in_its_own_format(tok, tokenizer, world):
    """The evaluation's replies (``experiments.evaluation.replies.generate``, through a role's
    ``reply_to``) start from the generation prompt of the role's own format: the chat template's for
    a template tokenizer, with PAT's tag opening the reply, and MOSS's for a MOSS tokenizer."""
    from types import SimpleNamespace

    from actors.sampling import SamplingRole
    from alignment.chat_format import generation_prompt
    from experiments.config import LabConfig
    from experiments.evaluation.replies import generate

    class Recorder(SamplingRole):
        def __init__(self, tokenizer) -> None:
            self.tokenizer, self.prompts = tokenizer, []

        def generate(self, prompts, sampling, batch_size, seed):
            self.prompts += prompts
            return ["reply"] * len(prompts)

    class OneRank:  # a role group of one rank, called in-process
        def __init__(self, role) -> None:
            self.role = role

        def map_sharded(self, method, items, **kwargs):
            return getattr(self.role, method)(list(items), **kwargs)

    prompts = world.prompts("test", 3)
    ctx = SimpleNamespace(cfg=LabConfig())
    template, moss = Recorder(tok), Recorder(tokenizer)
    for role in (template, moss):
        assert generate(ctx, OneRank(role), prompts, quality=100) == ["reply"] * 3
    assert template.prompts == [prompt_text(tok, p.conversation(), 100) for p in prompts]
    assert all(p.startswith("<|im_start|>system") and "<|MOSS|>" not in p and p.endswith("<quality: 100>\n")
               for p in template.prompts)
    assert moss.prompts == [generation_prompt(p.conversation(), 100) for p in prompts]

