"""Multi-pass inference with tools, on a scripted stand-in model: pass 1 stops at ``<eoc>``, the
commands run in the sandbox (only the enabled tools), Results and ``<|MOSS|>:`` are appended, and
pass 2 continues the same reply; rows that answer at once, or call nothing, finish too."""

from __future__ import annotations

import re

import torch

from alignment.chat_format import PLAIN_META, Conversation, ToolSwitch, Turn, meta_instruction
from alignment.generation import SamplingSpec
from alignment.tool_use import commands_of, generate_with_tools, tool_prompt

SCRIPT = {  # what the stand-in writes after a prompt that ends with the key
    "sum?<eoh>\n<|Inner Thoughts|>:": ' add them<eot>\n<|Commands|>: Calculate("2+3")<eoc>\n<|MOSS|>: never<eom>',
    "hello<eoh>\n<|Inner Thoughts|>:": " greet<eot>\n<|Commands|>: None<eoc>",
    "now<eoh>\n<|Inner Thoughts|>:": " quick<eot>\n<|MOSS|>: right away<eom>",
    "quick<eot>\n<|MOSS|>:": " right away<eom>",
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
            cont = next(v for k, v in SCRIPT.items() if text.endswith(k))
            ids = self.tok(cont, add_special_tokens=False)["input_ids"]
            stop = next((i for i, t in enumerate(ids) if t in eos_token_id), len(ids) - 1)
            rows.append(ids[: stop + 1][:max_new_tokens])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def _conv(human: str, tools: frozenset[str]) -> Conversation:
    return Conversation(meta_instruction(ToolSwitch(enabled=tools)) if tools else PLAIN_META, (Turn(human, ""),))


def test_two_passes_run_the_enabled_tools_and_continue_the_reply(tokenizer):
    calc = frozenset({"Calculator"})
    contexts = [_conv("What is the sum?", calc), _conv("What is the sum?", frozenset()), _conv("hello", calc),
                _conv("Answer now", calc)]
    model = Scripted(tokenizer)
    replies, n_tokens = generate_with_tools(model, tokenizer, contexts, SamplingSpec(do_sample=False), quality=100)
    assert [r.reply for r in replies] == ["The sum is 5.", "I could not compute it.", "Hello there!", "right away"]
    assert replies[0].results == 'Calculate("2+3") => "5"'
    assert replies[1].results == "No result."  # the calculator is disabled there: the call is ignored
    assert replies[2].results is None and replies[3].results is None
    assert '<|Results|>: Calculate("2+3") => "5"<eor>\n<|MOSS|>: <quality: 100> The sum is 5.<eom>' in \
        replies[0].transcript
    # pass 1 for every row, stopped at <eoc> or <|MOSS|>; pass 2 for all four, in one batch, under the tag
    assert len(model.prompts) == 2 and len(model.prompts[1]) == 4
    assert replies[3].transcript == " quick<eot>\n<|MOSS|>: <quality: 100> right away<eom>"
    assert all(p.endswith("<|Inner Thoughts|>:") for p in model.prompts[0])
    assert n_tokens > 0


def test_tool_prompt_and_commands_parsing():
    conv = _conv("hi", frozenset({"Calculator"}))
    assert tool_prompt(conv).endswith("<|Human|>: hi<eoh>\n<|Inner Thoughts|>:")
    assert commands_of(' x<eot>\n<|Commands|>: Calculate("1+1")<eoc>') == 'Calculate("1+1")'
    assert commands_of(" no commands<eot>") is None


def test_chat_command_talks_to_a_checkpoint_and_quits(tmp_path, tokenizer):
    """``+experiment=chat``: lines in, ``MOSS:`` replies out, /reset and /quit, no Ray; a bad path
    fails naming the key."""
    import subprocess
    import sys

    from alignment.models.causal_lm import ArchSpec, build_tiny
    from tests.lab import ROOT

    model_dir = tmp_path / "policy"
    build_tiny(ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer,
               seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    cmd = [sys.executable, "run.py", "+experiment=chat", f"chat.model_path={model_dir}", "eval.max_new_tokens=8",
           f"hydra.run.dir={tmp_path / 'run'}", "chat.tools=[Calculate]"]
    out = subprocess.run(cmd, cwd=ROOT, input="What is 2+3?\n/reset\nhello\n/quit\nnever read\n", text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("MOSS:") == 2 and "(new conversation)" in out.stdout
    assert "tools: Calculate" in out.stdout and "Ray dashboard" not in out.stdout
    bad = subprocess.run([*cmd[:3], f"chat.model_path={tmp_path / 'nowhere'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "config error: chat.model_path:" in bad.stderr
