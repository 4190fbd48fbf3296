"""The MOSS format: render/parse round trips, tags, tool switches, and loss masks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignment.chat_format import (
    CLOSE_TOKENS,
    Conversation,
    FormatError,
    Section,
    ToolSwitch,
    Turn,
    generation_prompt,
    meta_instruction,
    parse,
    parse_tool_switch,
    render,
    reply_text,
    segments,
)
from alignment.loss_mask import DEFAULT_POLICY, LossPolicy, encode, encode_many

# Bodies: any text without "<" (so no special token or quality tag can appear by accident).
body = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), min_size=1, max_size=30)
opt_body = st.none() | body
turns = st.builds(Turn, human=body, moss=body, inner_thoughts=opt_body, commands=opt_body, results=opt_body,
                  quality=st.none() | st.integers(0, 100))
tools = st.none() | st.builds(ToolSwitch, inner_thoughts=st.booleans(),
                              enabled=st.frozensets(st.sampled_from(["Web search", "Calculator", "Equation solver",
                                                                     "Text-to-image"])))
conversations = st.builds(lambda t, ts: Conversation(meta_instruction(t), tuple(ts)), tools,
                          st.lists(turns, min_size=1, max_size=3))
section_names = st.frozensets(st.sampled_from(["meta", "human", "inner_thoughts", "commands", "moss"]))


@given(conversations)
def test_render_parse_round_trip(conv):
    assert parse(render(conv)) == conv


def test_render_matches_moss_layout():
    conv = Conversation(meta_instruction(ToolSwitch(True, frozenset({"Calculator"}))), (
        Turn("What is 2+3?", "It is 5.", inner_thoughts="I need the calculator.", commands='Calculate("2+3")',
             results='Calculate("2+3") => "5"', quality=80),
    ))
    text = render(conv)
    assert text.endswith(
        "<|Human|>: What is 2+3?<eoh>\n<|Inner Thoughts|>: I need the calculator.<eot>\n"
        '<|Commands|>: Calculate("2+3")<eoc>\n<|Results|>: Calculate("2+3") => "5"<eor>\n'
        "<|MOSS|>: <quality: 80> It is 5.<eom>\n")
    assert "- Calculator: enabled. API: Calculate(expression)\n" in text
    assert "- Web search: disabled.\n" in text
    assert text.startswith("You are an AI assistant whose name is MOSS.\n")


@given(tools)
def test_tool_switch_round_trip(switch):
    meta = meta_instruction(switch)
    assert parse_tool_switch(meta) == switch


def test_disabled_tool_is_not_allowed():
    switch = ToolSwitch(True, frozenset({"Calculator"}))
    assert switch.allows("Calculate")
    assert not switch.allows("Search")
    assert not switch.allows("Unknown")
    assert parse_tool_switch(meta_instruction()) is None


def test_generation_prompt_ends_where_the_model_starts():
    conv = Conversation(meta_instruction(), (Turn("hi", "hello"), Turn("bye", "ignored")))
    prompt = generation_prompt(conv)
    assert prompt.endswith("<|Human|>: bye<eoh>\n<|MOSS|>:")
    assert generation_prompt(conv, quality=100).endswith("<|MOSS|>: <quality: 100>")
    assert render(conv).startswith(prompt)


@pytest.mark.parametrize("bad, msg", [
    ("no fields here", "no <|Human|>"),
    ("<|Human|>: hi<eom>\n", "closed by"),
    ("<|Human|>: hi<eoh>\n", "ends without a MOSS reply"),
    ("<|MOSS|>: hi<eom>\n", "before any <|Human|>"),
    ("<|Human|>: hi<eoh>\n<|Human|>: again<eoh>\n", "without a MOSS reply"),
])
def test_parse_rejects_malformed_text(bad, msg):
    with pytest.raises(FormatError, match=msg.replace("|", r"\|")):
        parse(bad)


def test_reply_text_cuts_at_end_of_message():
    assert reply_text(" Sure! 5.<eom>\n<|Human|>: more") == "Sure! 5."
    assert reply_text(" no end token") == "no end token"


def _expected_masked_text(conv, policy):
    return "".join(s.text for s in segments(conv) if policy.wants(s.section, s.model_written))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(conv=conversations, names=section_names)
def test_mask_covers_exactly_the_policy_spans(tokenizer, conv, names):
    policy = LossPolicy.from_names(names)
    enc = encode(conv, tokenizer, policy)
    assert len(enc.input_ids) == len(enc.loss_mask)
    assert tokenizer.decode(enc.input_ids) == render(conv)
    on = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    off = [t for t, m in zip(enc.input_ids, enc.loss_mask) if not m]
    assert tokenizer.decode(on) == _expected_masked_text(conv, policy)
    assert tokenizer.decode(off) == "".join(
        s.text for s in segments(conv) if not policy.wants(s.section, s.model_written))


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(convs=st.lists(conversations, min_size=1, max_size=4), names=section_names, last=st.booleans())
def test_encoding_many_conversations_equals_one_at_a_time(tokenizer, convs, names, last):
    policy = LossPolicy.from_names(names, last)
    many = encode_many(convs + convs[:1], tokenizer, policy)  # a repeated conversation too
    assert many == [encode(c, tokenizer, policy) for c in convs + convs[:1]]


def test_default_mask_is_moss_thoughts_and_commands(tokenizer):
    conv = Conversation(meta_instruction(), (
        Turn("Add 2 and 3", "It is 5.", inner_thoughts="Use it.", commands='Calculate("2+3")',
             results='Calculate("2+3") => "5"', quality=60),
    ))
    enc = encode(conv, tokenizer, DEFAULT_POLICY)
    on = tokenizer.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m])
    assert on == ' Use it.<eot> Calculate("2+3")<eoc> It is 5.<eom>'
    # the tag is a condition given at inference: no loss on it, nor on Results or the Human turn
    assert "quality" not in on and "=>" not in on and "Add 2" not in on
    assert CLOSE_TOKENS[Section.MOSS] in tokenizer.convert_ids_to_tokens(enc.input_ids)


def test_results_never_get_loss():
    with pytest.raises(ValueError, match="never get loss"):
        LossPolicy.from_names(["moss", "results"])
    with pytest.raises(ValueError, match="unknown loss section"):
        LossPolicy.from_names(["mos"])


def test_last_turn_only_policy(tokenizer):
    conv = Conversation(meta_instruction(), (Turn("a", "first reply"), Turn("b", "second reply")))
    enc = encode(conv, tokenizer, LossPolicy.from_names(["moss"], last_turn_only=True))
    on = tokenizer.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m])
    assert on == " second reply<eom>"


def test_special_tokens_are_single_ids(tokenizer):
    from alignment.chat_format import SPECIAL_TOKENS

    for tok in SPECIAL_TOKENS:
        assert len(tokenizer(tok, add_special_tokens=False)["input_ids"]) == 1, tok
    assert tokenizer.eos_token == "<eom>"
