"""Multi-pass inference with tools, on a scripted stand-in model: each pass ends at a field's close
token, the program writes ``<|Commands|>:``, runs the commands in the sandbox (only the enabled tools)
and writes Results and ``<|MOSS|>:``, and the next pass continues the same reply; rows that answer at
once, call nothing or write a malformed call finish too."""

from __future__ import annotations

import re

import torch

from alignment.chat_format import (
    PLAIN_META,
    Conversation,
    ToolSwitch,
    Turn,
    meta_instruction,
    moss_body,
    plugin_reply,
    render,
    reply_split,
    reply_turn,
)
from alignment.generation import SamplingSpec
from alignment.tool_use import ToolReply, commands_of, generate_with_tools, tool_prompt

SCRIPT = {  # what the stand-in writes after a prompt that ends with the key
    "sum?<eoh>\n<|Inner Thoughts|>:": " add them<eot>",
    "add them<eot>\n<|Commands|>:": ' Calculate("2+3")<eoc>',
    "hello<eoh>\n<|Inner Thoughts|>:": " greet<eot>",
    "greet<eot>\n<|Commands|>:": " None<eoc>",
    "now<eoh>\n<|Inner Thoughts|>:": " quick<|MOSS|>",
    "quick<|MOSS|>:": " right away<eom>",
    "odd<eoh>\n<|Inner Thoughts|>:": " try<eot>",
    "try<eot>\n<|Commands|>:": " Calculate(2+3<eoc>",
    '=> "5"<eor>\n<|MOSS|>:': " The sum is 5.<eom>",
    "<|Results|>: No result.<eor>\n<|MOSS|>:": " I could not compute it.<eom>",
    "<eoc>\n<|MOSS|>:": " Hello there!<eom>",
}


class Scripted(torch.nn.Module):
    """``generate`` writes the scripted continuation of each row, cut after its first stop id."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok, self.weight = tokenizer, torch.nn.Parameter(torch.zeros(1))
        self.prompts: list[list[str]] = []

    def generate(self, input_ids, attention_mask, eos_token_id, pad_token_id, max_new_tokens, **_):
        texts = self.tok.batch_decode(input_ids, skip_special_tokens=False)
        self.prompts.append([t.replace(self.tok.pad_token, "") for t in texts])
        rows = []
        for text in self.prompts[-1]:
            text = re.sub(r" <quality: \d+>$", "", text)  # PAT's tag opens the reply
            cont = next((v for k, v in SCRIPT.items() if text.endswith(k)), " and so on and on")
            ids = self.tok(cont, add_special_tokens=False)["input_ids"]
            stop = next((i for i, t in enumerate(ids) if t in eos_token_id), len(ids) - 1)
            rows.append(ids[: stop + 1][:max_new_tokens])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def _conv(human: str, tools: frozenset[str]) -> Conversation:
    return Conversation(meta_instruction(ToolSwitch(enabled=tools)) if tools else PLAIN_META, (Turn(human, ""),))


def test_passes_run_the_enabled_tools_and_continue_the_reply(tokenizer):
    calc = frozenset({"Calculator"})
    contexts = [_conv("What is the sum?", calc), _conv("What is the sum?", frozenset()), _conv("hello", calc),
                _conv("Answer now", calc), _conv("Something odd", calc)]
    model = Scripted(tokenizer)
    replies, n_tokens = generate_with_tools(model, tokenizer, contexts, SamplingSpec(do_sample=False), quality=100)
    assert [r.reply for r in replies] == ["The sum is 5.", "I could not compute it.", "Hello there!", "right away",
                                          "I could not compute it."]
    assert replies[0].results == 'Calculate("2+3") => "5"'
    assert replies[1].results == "No result."  # the calculator is disabled there: the call is ignored
    assert replies[2].results is None and replies[3].results is None  # "None" calls nothing
    assert replies[4].results == "No result."  # a malformed call: a Results error, the turn ends cleanly
    assert replies[0].transcript == (' add them<eot>\n<|Commands|>: Calculate("2+3")<eoc>\n'
                                     '<|Results|>: Calculate("2+3") => "5"<eor>\n<|MOSS|>: <quality: 100> '
                                     'The sum is 5.<eom>')
    assert replies[0].plugin == ('<|Inner Thoughts|>: add them<eot>\n<|Commands|>: Calculate("2+3")<eoc>\n'
                                 '<|Results|>: Calculate("2+3") => "5"<eor>\n<|MOSS|>: The sum is 5.')
    assert replies[2].plugin == "<|Inner Thoughts|>: greet<eot>\n<|Commands|>: None<eoc>\n<|MOSS|>: Hello there!"
    assert replies[3].transcript == " quick<|MOSS|>: <quality: 100> right away<eom>"
    # thoughts for every row; then commands (and row 3's reply) in one batch; then the replies
    assert [len(p) for p in model.prompts] == [5, 5, 4]
    assert all(p.endswith("<|Inner Thoughts|>:") for p in model.prompts[0])
    assert n_tokens > 0


def test_out_of_tokens_closes_the_field(tokenizer):
    """A pass that ends without a stop token has its field closed by the program and goes on."""
    model = Scripted(tokenizer)
    spec = SamplingSpec(do_sample=False, max_new_tokens=2)
    [reply], _ = generate_with_tools(model, tokenizer, [_conv("What is the sum?", frozenset({"Calculator"}))], spec)
    assert reply.transcript.count("<eot>") == 1 and reply.transcript.count("<eoc>") == 1
    assert "<|MOSS|>:" in reply.transcript and len(model.prompts) == 3


def test_tool_prompt_and_commands_parsing():
    conv = _conv("hi", frozenset({"Calculator"}))
    assert tool_prompt(conv).endswith("<|Human|>: hi<eoh>\n<|Inner Thoughts|>:")
    assert commands_of(' x<eot>\n<|Commands|>: Calculate("1+1")<eoc>') == 'Calculate("1+1")'
    assert commands_of(" no commands<eot>") is None
    reply = plugin_reply("It is 2.", "add", 'Calculate("1+1")', 'Calculate("1+1") => "2"')
    turn = reply_turn("hi", reply, quality=80)
    assert (turn.inner_thoughts, turn.commands, turn.results, turn.moss, turn.quality) == (
        "add", 'Calculate("1+1")', 'Calculate("1+1") => "2"', "It is 2.", 80)
    head, body = reply_split(Conversation(conv.meta_instruction, (turn,)), reply)
    assert head.endswith("<eoh>\n") and head + body + "\n" == render(Conversation(conv.meta_instruction,
                                                                                   (reply_turn("hi", reply),)))
    assert reply_split(conv, "plain")[0].endswith("<|MOSS|>:") and moss_body(reply) == "It is 2."


def test_plugin_replies_tokenize_as_sft_does_with_the_program_masked(tokenizer):
    """The preference model's and DPO's tokens of a plugin reply are SFT's (field by field), and
    DPO's mask leaves out the role prefixes and Results the program wrote."""
    from alignment.loss_mask import encode
    from alignment.sequences import reply_sequences, scored_sequences

    conv = _conv("What is 2+3?", frozenset({"Calculator"}))
    reply = plugin_reply("It is 5.", "add", 'Calculate("2+3")', 'Calculate("2+3") => "5"')
    (head, body, mask), = reply_sequences(tokenizer, [conv], [reply], 10_000, with_masks=True)
    whole = encode(conv.with_last_reply(reply), tokenizer)
    assert head + body == whole.input_ids[:len(head) + len(body)] and len(whole.input_ids) == len(head) + len(body) + 1
    assert mask == whole.loss_mask[len(head):len(head) + len(body)]  # loss on thoughts, commands, reply only
    written = tokenizer.decode([t for t, m in zip(body, mask) if m], skip_special_tokens=False)
    assert written == ' add<eot> Calculate("2+3")<eoc> It is 5.<eom>'
    assert scored_sequences(tokenizer, [conv], [reply], 10_000) == [head + body]
    (h2, b2), = reply_sequences(tokenizer, [conv], ["plain"], 10_000)
    assert tokenizer.decode(b2, skip_special_tokens=False) == " plain<eom>"


def test_tool_copy_benchmark_counts_calls_copies_and_answers():
    """``benchmarks/tool_copy.py``'s table: a call counts by the judge's rule (the task's tool only,
    every line well formed), a copy only within such a call and only when the argument is the
    request's expression, a right answer by the judge's rule; facts have no copy."""
    from alignment.world import World, WorldSpec
    from alignment.world.categories.tool_use import is_tool_task
    from benchmarks.tool_copy import score

    tasks = [p for p in World(WorldSpec(seed=0, tool_share=0.5)).prompts("test", 200) if is_tool_task(p)]
    arith = [p for p in tasks if p.task.spec["kind"] == "arithmetic"][:6]
    equation = next(p for p in tasks if p.task.spec["kind"] == "equation")
    fact = next(p for p in tasks if p.task.spec["kind"] == "fact")
    call = [p.task.spec["call"] for p in arith]
    answer = [p.task.spec["answer"] for p in arith]

    def reply(body: str, commands: str) -> ToolReply:
        return ToolReply(body, "", None, "t", commands)

    prompts = [*arith, equation, fact]
    replies = [
        reply(f"It is {answer[0]}.", f'Calculate("{call[0]}")'),  # calls, copies, right
        reply("It is 1.5.", f'Calculate("{call[1]}+1")'),  # calls, miscopies, wrong
        reply(f"It is {answer[2]}.", f'Solve("{call[2]}")'),  # the wrong tool, right
        reply("It is 7.5.", "None"),  # no call
        reply("It is 7.5.", f'Calculate("{call[4]}")\nSearch("x")'),  # a second tool: no call, no copy
        reply("It is 7.5.", f'Calculate("{call[5]}")\nCalculate(oops'),  # a malformed line: no call
        reply(f"x = {equation.task.spec['answer']}", f'Solve("{equation.task.spec["call"]}")'),
        reply(f"It is {fact.task.spec['answer']}.", f'Search("{fact.task.spec["call"]}")'),
    ]
    assert score(prompts, replies) == {"arithmetic": {"requests": 6, "calls": 2, "copied": 1, "right": 2},
                                       "equation": {"requests": 1, "calls": 1, "copied": 1, "right": 1},
                                       "fact": {"requests": 1, "calls": 1, "copied": 0, "right": 1}}
