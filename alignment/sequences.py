"""Token ids of a conversation that ends in a given reply, built the way generation builds them.

A plain reply follows ``…<|MOSS|>:``; a plugin reply (Inner Thoughts, Commands, Results, MOSS:
``alignment.chat_format.reply_split``) follows the human message.

The preference model scores ``prompt ids + reply ids`` whether the reply came from a data file
or from the policy, so training and scoring see the same tokens. Its view of the context can be
narrowed to the last few turns (``context_turns``): the meta-instruction and older rounds then
drop out, which makes scoring several times cheaper when the judgement rests on the last request.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignment.chat_format import (
    Conversation,
    Section,
    is_plugin_reply,
    reply_split,
    reply_turn,
    turn_segments,
    written_body,
)
from alignment.template_format import prompt_text, template_body, uses_template


def last_turns(context: Conversation, n: int) -> Conversation:
    """The last ``n`` turns of ``context`` without its meta-instruction; ``n <= 0`` keeps it whole."""
    return context if n <= 0 else Conversation("", context.turns[-n:])


def prompt_ids(tokenizer, context: Conversation, quality: int | None = None) -> list[int]:
    return tokenizer(prompt_text(tokenizer, context, quality), add_special_tokens=False)["input_ids"]


def scored_sequence(tokenizer, context: Conversation, reply: str, max_length: int,
                    context_turns: int = 0) -> list[int]:
    """Context (its last ``context_turns`` turns, or all of it for 0) plus reply, keeping the last
    ``max_length`` tokens (the score is read at the end)."""
    return scored_sequences(tokenizer, [context], [reply], max_length, context_turns)[0]


def scored_sequences(tokenizer, contexts: Sequence[Conversation], replies: Sequence[str], max_length: int,
                     context_turns: int = 0) -> list[list[int]]:
    """``scored_sequence`` of each (context, reply) pair, the texts tokenized in two batches."""
    if len(contexts) != len(replies):
        raise ValueError(f"{len(contexts)} contexts for {len(replies)} replies")
    if not replies:
        return []
    heads, bodies, _ = _split(tokenizer, [last_turns(c, context_turns) for c in contexts], replies)
    return [(head + body)[-max_length:] for head, body in zip(heads, bodies)]


def _split(tokenizer, contexts: Sequence[Conversation], replies: Sequence[str]) -> tuple[list, list, list]:
    """Token ids of each reply's head and body (``reply_split``: plain and plugin replies), and the
    body's mask: 1 on what the model wrote. A plain body is one text; a plugin body is tokenized
    field by field, as SFT's ``encode`` tokenizes it, the role prefixes and Results (the program's)
    masked out. The texts are tokenized in batches, each distinct text once."""
    if uses_template(tokenizer):  # the chat template: the generation prompt, then the reply and end of turn
        heads = [prompt_text(tokenizer, c) for c in contexts]
        pieces = [[(template_body(r, tokenizer), True)] for r in replies]
    else:
        heads = [h for h, _ in (reply_split(c, r) for c, r in zip(contexts, replies))]
        pieces = [_body_segments(r) for r in replies]
    texts = list(dict.fromkeys([*heads, *(t for segs in pieces for t, _ in segs)]))
    ids_of = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]))
    bodies, masks = [], []
    for segs in pieces:
        body: list[int] = []
        mask: list[int] = []
        for text, written in segs:
            body += ids_of[text]
            mask += [int(written)] * len(ids_of[text])
        bodies.append(body)
        masks.append(mask)
    return [ids_of[h] for h in heads], bodies, masks


def _body_segments(reply: str) -> list[tuple[str, bool]]:
    """A reply's body as (text, written by the model) pieces; they concatenate to ``reply_split``'s body."""
    if not is_plugin_reply(reply):
        return [(written_body(reply), True)]
    segs = [seg for seg in turn_segments(reply_turn("", reply)) if seg.section is not Section.HUMAN][:-1]
    return [(seg.text, seg.model_written) for seg in segs]


def reply_sequences(tokenizer, contexts: Sequence[Conversation], replies: Sequence[str],
                    max_length: int, with_masks: bool = False) -> list[tuple[list[int], ...]]:
    """``(prompt ids, reply ids)`` of each (context, reply), the tokens generation builds (the whole
    context's ``prompt_ids``, then the written reply), for a policy's log-prob of the reply. Within
    ``max_length`` tokens: the reply keeps its start and the prompt its end, the prompt at least
    ``min(len(prompt), max_length // 2)`` tokens (never none). ``with_masks``: each row also holds
    the reply's mask, 0 on the tokens the program wrote in a plugin reply (role prefixes, Results)."""
    if len(contexts) != len(replies):
        raise ValueError(f"{len(contexts)} contexts for {len(replies)} replies")
    if max_length < 2:
        raise ValueError(f"max_length: {max_length}; at least 2 (a prompt token and a reply token)")
    if not replies:
        return []
    heads, bodies, masks = _split(tokenizer, contexts, replies)
    out: list[tuple[list[int], ...]] = []
    for head, body, mask in zip(heads, bodies, masks):
        if len(head) + len(body) > max_length:
            body = body[: max_length - max(1, min(len(head), max_length // 2))]
            head = head[-(max_length - len(body)):]
        out.append((list(head), list(body), mask[:len(body)]) if with_masks else (list(head), list(body)))
    return out


def written_lengths(tokenizer, replies: Sequence[str]) -> list[int]:
    """Each reply's length in the tokens its writer wrote: a plain body with its ``<eom>``; of a
    plugin reply, the Inner Thoughts, Commands and reply (not the role prefixes or Results); in the
    chat-template format, the reply and its end-of-turn token."""
    pieces = ([[(template_body(r, tokenizer), True)] for r in replies] if uses_template(tokenizer)
              else [_body_segments(r) for r in replies])
    texts = list(dict.fromkeys(t for segs in pieces for t, _ in segs))
    n_of = dict(zip(texts, (len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])))
    return [sum(n_of[t] for t, written in segs if written) for segs in pieces]
