"""Multi-pass inference with MOSS's tools (MOSS §8, SPEC "plugin inference takes two passes").

The model writes the bodies of Inner Thoughts, Commands and the MOSS reply; the program writes the
role prefixes and the Results. A reply starts at ``<|Inner Thoughts|>:`` and each pass generates
until a field's close token:

* at ``<eot>`` the program appends ``\n<|Commands|>:``;
* at ``<eoc>`` it parses the Commands field and, unless it is ``None`` (no tool), runs its calls in
  the sandbox (:func:`alignment.tools.run_commands`: only the tools the meta-instruction enables, at
  most ``max_calls``) and appends ``\n<|Results|>: … <eor>``; then ``\n<|MOSS|>:`` (with PAT's tag,
  when given);
* at ``<eom>`` the reply is done. A row that writes a role token itself (``<|Commands|>``,
  ``<|MOSS|>``) gets the ``:`` after it; a row out of tokens in a field gets the field closed;
* any other special token (a stray ``<eoh>``, ``<|Human|>``, ``<eor>``...) ends the reply as ``<eom>``
  does: a pass stops at the first special token, as a plain reply does
  (``alignment.rollout.sample_to_first_special``), so nothing after it is sampled, scored or given an
  advantage.

Batched: every active row of a batch generates together in each pass, so rows that stopped for a
tool wait while the others go on; a reply takes at most three passes. A tool's error is its Results
text (``No result.``), never an exception here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignment.chat_format import (
    CLOSE_TOKENS,
    ROLE_TOKENS,
    Conversation,
    Section,
    human_prompt,
    plugin_reply,
    quality_tag,
    reply_text,
)
from alignment.generation import RolloutSpec, SamplingSpec, as_generator, in_lockstep
from alignment.lockstep import agreed_max
from alignment.models.tokenizer import special_ids
from alignment.rollout import sample_to_first_special
from alignment.tools import NO_RESULT, enabled_tools, run_commands

INNER, COMMANDS, RESULTS, MOSS = (ROLE_TOKENS[s] for s in (Section.INNER_THOUGHTS, Section.COMMANDS,
                                                                 Section.RESULTS, Section.MOSS))
EOT, EOC, EOR, EOM = (CLOSE_TOKENS[s] for s in (Section.INNER_THOUGHTS, Section.COMMANDS, Section.RESULTS,
                                                Section.MOSS))
STOPS = (EOT, EOC, EOM, COMMANDS, MOSS)
"""Where a pass ends: a field's close token, or a role token the model wrote itself."""
MAX_PASSES = 3
"""Thoughts, commands, reply: each pass ends at least one field."""


def stray_tokens(tokenizer: Any) -> frozenset[str]:
    """The special tokens of ``tokenizer`` that are not a step of a plugin turn (:data:`STOPS`): where
    a reply through the tools ends, as a plain reply ends at any special token."""
    tokens = tokenizer.convert_ids_to_tokens(special_ids(tokenizer))
    return frozenset(t for t in tokens if t is not None) - set(STOPS)


@dataclass(frozen=True)
class ToolReply:
    """One reply: its MOSS body, everything written after ``<|Inner Thoughts|>:`` (``transcript``,
    tag included), the Results text (None: no tool ran), and the model's Inner Thoughts and
    Commands (None where it wrote none)."""

    reply: str
    transcript: str
    results: str | None
    thoughts: str | None = None
    commands: str | None = None

    @property
    def plugin(self) -> str:
        """The reply as a plugin reply (``alignment.chat_format.plugin_reply``), without the tag:
        what judges score and caches keep."""
        return plugin_reply(self.reply, self.thoughts, self.commands, self.results)


def tool_prompt(conv: Conversation) -> str:
    """The text the first pass starts from: the conversation up to the last human turn, then
    ``<|Inner Thoughts|>:``, where the model begins a plugin turn."""
    return human_prompt(conv) + f"{INNER}:"


def commands_of(generated: str) -> str | None:
    """The Commands field of a transcript (before ``<eoc>``), or None if it has none."""
    head = generated.split(EOC, 1)[0]
    return head.rsplit(COMMANDS + ":", 1)[1].strip() if COMMANDS + ":" in head else None


class _Row:
    """One reply under way: the field being written, what the model and the program wrote, and the
    fields' texts."""

    def __init__(self, field: Section = Section.INNER_THOUGHTS) -> None:
        self.field, self.text = field, ""
        self.thoughts: str | None = None
        self.commands: str | None = None
        self.results: str | None = None
        self.reply = ""
        self.done = False

    def advance(self, new: str, enabled: frozenset[str], tag: str, max_calls: int, run: Callable[..., str],
                strays: Collection[str] = ()) -> str:
        """Take one pass's text (the model's, up to and including its first stop) and return what the
        program writes after it (empty when the reply is done). A stray special token (``strays``:
        :func:`stray_tokens`) ends the reply as ``<eom>`` does."""
        cuts = sorted((new.find(t), t) for t in (*STOPS, *strays) if t in new)
        stop = cuts[0][1] if cuts else None
        body = new[: cuts[0][0]] if cuts else new
        self.text += new
        if self.field is Section.MOSS or stop == EOM or stop in strays:  # the reply is written (or ended early)
            self.reply, self.done = reply_text(body), True
            return ""
        if stop == MOSS:  # the model went to its reply itself (a Commands field it left open runs nothing)
            if self.field is Section.INNER_THOUGHTS:
                self.thoughts = body.strip()
            else:
                self.commands = body.strip()
            return self._write(f":{tag}", Section.MOSS)
        if self.field is Section.INNER_THOUGHTS and stop != EOC:  # <eot>, <|Commands|> or out of tokens
            self.thoughts = body.strip()
            program = {EOT: f"\n{COMMANDS}:", COMMANDS: ":"}.get(stop, f"{EOT}\n{COMMANDS}:")
            return self._write(program, Section.COMMANDS)
        self.commands = body.strip()  # the Commands field ends, however it stopped
        program = "" if stop == EOC else EOC
        if self.commands not in ("", "None"):
            self.results = run(self.commands, enabled, max_calls=max_calls)
            program += f"\n{RESULTS}: {self.results}{EOR}"
        return self._write(program + f"\n{MOSS}:{tag}", Section.MOSS)

    def _write(self, program: str, field: Section) -> str:
        self.text += program
        self.field = field
        return program

    def tool_reply(self) -> ToolReply:
        return ToolReply(self.reply, self.text, self.results, self.thoughts, self.commands)


def generate_with_tools(model, tokenizer, contexts: Sequence[Conversation], spec: SamplingSpec,
                        quality: int | None = None, max_calls: int = 8, batch_size: int = 32, seed: int = 0,
                        run: Callable[..., str] = run_commands) -> tuple[list[ToolReply], int]:
    """A reply to each conversation's last human turn through the passes, with the tools its
    meta-instruction enables; ``quality`` tags the MOSS reply (PAT). ``model``: a model or a
    ``Generator``. Returns the replies and the tokens generated in all passes."""
    gen = as_generator(model, tokenizer)
    stop_ids, strays = special_ids(tokenizer), stray_tokens(tokenizer)  # every special token ends a pass
    tag = f" {quality_tag(quality)}" if quality is not None else ""
    torch.manual_seed(seed)
    out: list[ToolReply] = []
    n_tokens = 0
    # ranks in lockstep (ZeRO-3: every forward pass is collective) make the same calls: as many
    # chunks as the rank with the most, and a pass whenever any rank has a row to continue; a rank
    # with none generates a filler row and drops it (``alignment.lockstep``)
    synced = in_lockstep(gen)
    for c in range(agreed_max(-(-len(contexts) // batch_size), synced)):
        chunk = list(contexts[c * batch_size:(c + 1) * batch_size])
        heads = [tool_prompt(conv) for conv in chunk]
        rows = [_Row() for _ in chunk]
        enabled = [enabled_tools(conv.meta_instruction) for conv in chunk]
        for _ in range(MAX_PASSES):
            active = [i for i, r in enumerate(rows) if not r.done]
            if not agreed_max(int(bool(active)), synced):
                break
            texts, n = gen.until([heads[i] + rows[i].text for i in active] or [tokenizer.eos_token], spec, stop_ids)
            n_tokens += n if active else 0
            for i, new in zip(active, texts):
                rows[i].advance(new, enabled[i], tag, max_calls, run, strays)
        out.extend(r.tool_reply() for r in rows)
    return out, n_tokens


def sample_with_tools(model, tokenizer, prompts: Sequence[Sequence[int]], enabled: Sequence[frozenset[str] | None],
                      spec: RolloutSpec, max_calls: int = 8, seed: int = 0, run: Callable[..., str] = run_commands,
                      quality: int | None = None,
                      ) -> tuple[list[list[int]], list[list[float]], list[list[int]], list[str]]:
    """PPO's rollouts with tools, on token ids. A row with ``enabled`` tools starts at
    ``<|Inner Thoughts|>:`` (its prompt ends there: :func:`tool_prompt`) and goes through the passes;
    a row with ``None`` is a plain reply (its prompt ends ``<|MOSS|>:``). Each pass samples the
    active rows together (``Generator.sample``); what the program writes (role prefixes, Results)
    joins the response with log-prob 0 and action mask 0, so it gets no log-prob ratio, no KL and
    no advantage. Returns per row the response ids, their log-probs, the action mask (1 on the
    tokens the model sampled) and the reply (a plugin reply for tool rows, the body for plain ones).
    ``quality``: PAT's tag, which the program writes after a tool row's ``<|MOSS|>:`` (a plain row's
    prompt carries its own). ``model``: a model or a ``Generator``."""
    gen = as_generator(model, tokenizer)
    strays = stray_tokens(tokenizer)
    tag = f" {quality_tag(quality)}" if quality is not None else ""
    rows = [_Row(Section.INNER_THOUGHTS if e is not None else Section.MOSS) for e in enabled]
    ids: list[list[int]] = [[] for _ in prompts]
    lps: list[list[float]] = [[] for _ in prompts]
    mask: list[list[int]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    synced = in_lockstep(gen)
    for n_pass in range(MAX_PASSES + 1):
        # pass 0: the plain rows, to their first special token as a plain rollout samples them; then the tool rows
        active = [i for i, (r, e) in enumerate(zip(rows, enabled)) if not r.done and (e is None) == (n_pass == 0)]
        # ranks in lockstep (ZeRO-3) sample a pass whenever any rank has a row for it; a rank with
        # none samples a filler row and drops it (``alignment.lockstep``)
        if not agreed_max(int(bool(active)), synced):
            continue
        # every pass ends at its first special token, as a plain rollout's reply does: a field's close
        # token or role token goes on to the next field, any other ends the reply
        batch = [list(prompts[i]) + ids[i] for i in active] or [[tokenizer.eos_token_id]]
        new, new_lps = sample_to_first_special(gen, tokenizer, batch, spec, seed=None)
        for i, toks, lp in zip(active, new, new_lps):
            ids[i] += toks
            lps[i] += lp
            mask[i] += [1] * len(toks)
            program = rows[i].advance(tokenizer.decode(toks, skip_special_tokens=False), enabled[i] or frozenset(),
                                      tag, max_calls, run, strays)
            if program:
                written = tokenizer(program, add_special_tokens=False)["input_ids"]
                ids[i] += written
                lps[i] += [0.0] * len(written)
                mask[i] += [0] * len(written)
    replies = [r.tool_reply().plugin if e is not None else r.reply for r, e in zip(rows, enabled)]
    return ids, lps, mask, replies


__all__ = ["NO_RESULT", "ToolReply", "commands_of", "generate_with_tools", "sample_with_tools", "stray_tokens",
           "tool_prompt"]
