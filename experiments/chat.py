"""Chat driver: talk to a trained policy in the terminal, as MOSS's CLI demo did.
``python run.py +experiment=chat chat.model_path=<dir>``.

The model loads in this process (no Ray). Each line you type is a human turn; the reply is
sampled with the evaluation's settings (``eval.temperature``, ``eval.top_p``, ...), under PAT's
tag with ``chat.quality``. With ``chat.tools`` (``[Calculate, Solve, Search]``) the
meta-instruction switches those tools on and every reply goes through the two passes of tool use
(``alignment.tool_use``), printing the Commands and Results it produced. ``/reset`` starts a new
conversation; ``/quit`` (or end of input) leaves.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from alignment.chat_format import PLAIN_META, Conversation, ToolSwitch, Turn, generation_prompt, meta_instruction
from alignment.generation import generate_replies
from alignment.models.causal_lm import load_causal_lm
from alignment.models.tokenizer import load_tokenizer
from alignment.tool_use import commands_of, generate_with_tools
from alignment.tools import DISPLAY_NAMES
from experiments.context import RunContext
from experiments.specs import sampling_spec

CALL_TO_DISPLAY = {call: display for display, call in DISPLAY_NAMES.items()}


def chat(ctx: RunContext, stdin: TextIO, stdout: TextIO) -> int:
    """Read turns from ``stdin`` and write replies to ``stdout`` until ``/quit`` or end of input;
    returns the number of replies."""
    c = ctx.cfg.chat
    tokenizer = load_tokenizer(c.model_path)
    model = load_causal_lm(c.model_path, tokenizer)
    switch = ToolSwitch(enabled=frozenset(CALL_TO_DISPLAY[t] for t in c.tools)) if c.tools else None
    meta = meta_instruction(switch) if switch else PLAIN_META
    spec = sampling_spec(ctx.cfg)
    tools = f", tools: {', '.join(c.tools)}" if c.tools else ""
    print(f"Chatting with {c.model_path}{tools}. /reset starts over, /quit leaves.", file=stdout, flush=True)
    turns: list[Turn] = []
    replies = 0
    for line in stdin:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            turns = []
            print("(new conversation)", file=stdout, flush=True)
            continue
        if not text:
            continue
        conv = Conversation(meta, (*turns, Turn(text, "")))
        if c.tools:
            out = generate_with_tools(model, tokenizer, [conv], spec, c.quality, ctx.cfg.tools.max_calls,
                                      seed=ctx.cfg.seed + replies)[0][0]
            commands = commands_of(out.transcript)
            if out.results is not None:
                print(f"  [Commands] {commands}\n  [Results] {out.results}", file=stdout)
            turn = Turn(text, out.reply, commands=commands if out.results is not None else None,
                        results=out.results, quality=c.quality)
            reply = out.reply
        else:
            reply = generate_replies(model, tokenizer, [generation_prompt(conv, c.quality)], spec,
                                     seed=ctx.cfg.seed + replies)[0][0]
            turn = Turn(text, reply, quality=c.quality)
        print(f"MOSS: {reply}", file=stdout, flush=True)
        turns.append(turn)
        replies += 1
    return replies


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=chat``."""
    if not ctx.cfg.chat.model_path:
        raise ValueError("chat.model_path: required, a trained policy's directory (e.g. results.json's artifacts.pat)")
    return {"replies": chat(ctx, sys.stdin, sys.stdout)}
