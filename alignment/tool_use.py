"""Multi-pass inference with MOSS's tools (MOSS §8, SPEC "plugin inference takes two passes").

Pass 1 generates the model-written plugin fields, from ``<|Inner Thoughts|>:`` until ``<eoc>``
(or ``<|MOSS|>``, when the model goes straight to its reply). At ``<eoc>`` the program parses the
Commands field, runs its calls in the sandbox (:func:`alignment.tools.run_commands`, only the
tools the meta-instruction enables, at most ``max_calls`` calls), and appends
``<|Results|>: … <eor>`` and ``<|MOSS|>:`` (with PAT's tag, when given); at ``<|MOSS|>`` it adds
the ``:`` and the tag. Pass 2 continues the same reply until ``<eom>``.

Batched: every prompt of a batch runs pass 1 together; the rows that stopped for a tool then run
pass 2 together while the others are done. A tool's error is its Results text (``No result.``),
never an exception here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignment.chat_format import (
    CLOSE_TOKENS,
    ROLE_TOKENS,
    TURN_ORDER,
    Conversation,
    Section,
    quality_tag,
    render,
    reply_text,
)
from alignment.generation import SamplingSpec, eval_mode
from alignment.tools import NO_RESULT, enabled_tools, run_commands

COMMANDS, RESULTS, MOSS = (ROLE_TOKENS[s] for s in (Section.COMMANDS, Section.RESULTS, Section.MOSS))
EOC, EOR, EOM = (CLOSE_TOKENS[s] for s in (Section.COMMANDS, Section.RESULTS, Section.MOSS))


@dataclass(frozen=True)
class ToolReply:
    """One reply: its MOSS body, what the model and the program wrote on the way (``transcript``:
    Inner Thoughts, Commands, Results, then the reply) and the Results text (None: no tool ran)."""

    reply: str
    transcript: str
    results: str | None


def tool_prompt(conv: Conversation) -> str:
    """The text pass 1 starts from: the conversation up to the last human turn, then
    ``<|Inner Thoughts|>:``, where the model begins a plugin turn."""
    last = conv.turns[-1]
    text = render(Conversation(conv.meta_instruction, conv.turns[:-1]))
    text += f"{ROLE_TOKENS[Section.HUMAN]}: {last.human}{CLOSE_TOKENS[Section.HUMAN]}\n"
    return text + f"{ROLE_TOKENS[TURN_ORDER[1]]}:"


def commands_of(generated: str) -> str | None:
    """The Commands field of pass 1's text (before ``<eoc>``), or None if it wrote none."""
    head = generated.split(EOC, 1)[0]
    return head.rsplit(COMMANDS + ":", 1)[1].strip() if COMMANDS + ":" in head else None


def _generate(model, tokenizer, texts: list[str], spec: SamplingSpec, stop: list[int]) -> tuple[list[str], int]:
    """One batched ``generate`` pass until a ``stop`` id: each row's new text (special tokens kept)
    and the tokens generated."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs = dict(max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample,
                  repetition_penalty=spec.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=stop)
    if spec.do_sample:
        kwargs.update(temperature=spec.temperature, top_p=spec.top_p)
    new = model.generate(**enc, **kwargs)[:, enc["input_ids"].size(1):]
    ended = torch.isin(new, torch.tensor(stop, device=new.device)).long()
    n_tokens = int(((ended.cumsum(1) - ended) == 0).sum())
    return [_cut(t, tokenizer.pad_token) for t in tokenizer.batch_decode(new, skip_special_tokens=False)], n_tokens


def _cut(text: str, pad: str | None) -> str:
    """A generated row up to and including its first stop token, without padding."""
    if pad:
        text = text.replace(pad, "")
    ends = [i + len(t) for t in (EOC, MOSS, EOM) if (i := text.find(t)) >= 0]
    return text[: min(ends)] if ends else text


@torch.inference_mode()
def generate_with_tools(model, tokenizer, contexts: Sequence[Conversation], spec: SamplingSpec,
                        quality: int | None = None, max_calls: int = 8, batch_size: int = 32, seed: int = 0,
                        run: Callable[..., str] = run_commands) -> tuple[list[ToolReply], int]:
    """A reply to each conversation's last human turn through the two passes, with the tools its
    meta-instruction enables; ``quality`` tags the MOSS reply (PAT). Returns the replies and the
    tokens generated in both passes."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (EOC, EOM, MOSS)}
    torch.manual_seed(seed)
    out: list[ToolReply] = []
    n_tokens = 0
    with eval_mode(model):
        for start in range(0, len(contexts), batch_size):
            chunk = list(contexts[start:start + batch_size])
            heads = [tool_prompt(c) for c in chunk]
            first, n = _generate(model, tokenizer, heads, spec, [ids[EOC], ids[MOSS], ids[EOM]])
            n_tokens += n
            tag = f" {quality_tag(quality)}" if quality is not None else ""
            again, results = [], [None] * len(chunk)
            for i, (conv, text) in enumerate(zip(chunk, first)):
                if text.endswith(EOM):  # a reply without its <|MOSS|> field: take it as it is
                    continue
                if text.endswith(MOSS):  # straight to the reply: the program writes ':' and the tag
                    first[i] = f"{text}:{tag}"
                    again.append(i)
                    continue
                commands = commands_of(text)
                if commands not in (None, "", "None") and text.endswith(EOC):
                    results[i] = run(commands, enabled_tools(conv.meta_instruction), max_calls=max_calls)
                    first[i] = f"{text}\n{RESULTS}: {results[i]}{EOR}\n{MOSS}:{tag}"
                else:  # no call ("None"), no Commands field, or out of tokens: straight to the reply
                    first[i] = f"{text}\n{MOSS}:{tag}"
                again.append(i)
            second: dict[int, str] = {}
            if again:  # the rows that stopped for a tool, and those yet to reply, together
                texts, n = _generate(model, tokenizer, [heads[i] + first[i] for i in again], spec, [ids[EOM]])
                second, n_tokens = dict(zip(again, texts)), n_tokens + n
            for i in range(len(chunk)):
                transcript = first[i] + second.get(i, "")
                body = transcript.rsplit(MOSS + ":", 1)[1] if MOSS + ":" in transcript else transcript
                out.append(ToolReply(reply_text(body.removeprefix(tag)), transcript, results[i]))
    return out, n_tokens


__all__ = ["NO_RESULT", "ToolReply", "commands_of", "generate_with_tools", "tool_prompt"]
