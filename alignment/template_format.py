"""The model's own chat template as the conversation format (``model.chat_format=template``).

A pretrained chat model (SmolLM2-Instruct, Qwen2-Instruct, ...) already knows its chat template
(``tokenizer.apply_chat_template``); training and sampling it in that format spares it MOSS's
special tokens. A tokenizer speaks this format when its ``init_kwargs`` hold
``lab_chat_format: template`` (saved with it in ``tokenizer_config.json``, so every stage that
loads the checkpoint's tokenizer speaks the same format); otherwise it speaks MOSS
(``alignment.chat_format``).

The conversation's meta-instruction is the system message, each human turn a user message and
each reply an assistant message. The template renders the conversation with a unique marker in
place of every reply; the text is then cut at the markers into the same :class:`Segment` list the
MOSS format gives, so the loss masks (``alignment.loss_mask``) cover the same things: the reply's
body and the end-of-turn token that closes it (the tokenizer's ``eos_token``), never the template's
role headers, the system prompt or the user's turns. PAT's quality tag ``<quality: S>`` (a
condition the program writes) opens the assistant reply, on its own line, as it opens the MOSS
section in the MOSS format.

Tool turns (Inner Thoughts, Commands, Results) stay MOSS-only: a conversation holding them is a
:class:`~alignment.chat_format.FormatError` here.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignment.chat_format import (
    REPLY_STOPS,
    Conversation,
    FormatError,
    Section,
    Segment,
    Turn,
    before_first,
    generation_prompt,
    quality_tag,
    segments,
)

FORMAT_KEY = "lab_chat_format"
FORMATS: tuple[str, ...] = ("moss", "template")
_MARK = "\u2063LABREPLY{}\u2063"  # invisible separator around the turn index: text no reply contains


def format_of(tokenizer) -> str:
    """``"template"`` when ``tokenizer`` speaks its chat template, else ``"moss"``."""
    return "template" if getattr(tokenizer, "init_kwargs", {}).get(FORMAT_KEY) == "template" else "moss"


def uses_template(tokenizer) -> bool:
    return format_of(tokenizer) == "template"


def mark_template(tokenizer) -> None:
    """Make ``tokenizer`` speak its chat template (and say so in what ``save_pretrained`` writes)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.chat_format=template: the tokenizer has no chat template "
                         "(use model.chat_format=moss for this model)")
    if not tokenizer.eos_token:
        raise ValueError("model.chat_format=template: the tokenizer has no eos_token to end a reply")
    tokenizer.init_kwargs[FORMAT_KEY] = "template"
    _check(tokenizer)


def _messages(conv: Conversation, replies: Sequence[str]) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": conv.meta_instruction}] if conv.meta_instruction else []
    for turn, reply in zip(conv.turns, replies):
        if turn.inner_thoughts is not None or turn.commands is not None or turn.results is not None:
            raise FormatError("tool turns (Inner Thoughts, Commands, Results) exist only in model.chat_format=moss")
        msgs.append({"role": "user", "content": turn.human})
        msgs.append({"role": "assistant", "content": reply})
    return msgs


def _apply(tokenizer, msgs: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


def _close(tokenizer, after: str) -> tuple[str, str]:
    """Split the text the template writes after a reply into ``(end-of-turn, rest)``: the reply's
    writer emits everything up to and including the tokenizer's ``eos_token``."""
    eos = tokenizer.eos_token
    at = after.find(eos)
    if at < 0:
        raise ValueError(f"the chat template does not close an assistant turn with the eos token {eos!r} "
                         f"(it writes {after[:40]!r}); set the tokenizer's eos_token to its end-of-turn token")
    return after[:at + len(eos)], after[at + len(eos):]


def _check(tokenizer) -> None:
    """The template's generation prompt is the head of the rendered conversation (what sampling
    starts from is what training saw), and an assistant turn ends with the eos token."""
    conv = Conversation("system text", (Turn("user text", ""),))
    full = _apply(tokenizer, _messages(conv, [_MARK.format(0)]))
    head, _, after = full.partition(_MARK.format(0))
    _close(tokenizer, after)
    prompt = _apply(tokenizer, _messages(conv, [""])[:-1], add_generation_prompt=True)
    if prompt != head:
        raise ValueError(f"the chat template's generation prompt {prompt[-40:]!r} is not how it opens an "
                         f"assistant turn ({head[-40:]!r}); it cannot be used with model.chat_format=template")


def template_segments(conv: Conversation, tokenizer) -> list[Segment]:
    """The conversation rendered by the template, as segments: the program's text before each
    reply (system, user turns, role headers; ``Section.HUMAN``, with the system prompt in the first),
    the quality tag (``Section.MOSS``, the program's) and the reply with its end-of-turn token
    (``Section.MOSS``, the model's). Their texts concatenate to the template's rendering."""
    marks = [_MARK.format(i) for i in range(len(conv.turns))]
    text = _apply(tokenizer, _messages(conv, marks))
    segs: list[Segment] = []
    pos = 0
    for turn, mark in zip(conv.turns, marks):
        at = text.find(mark, pos)
        if at < 0:
            raise FormatError("the chat template dropped an assistant reply (it cannot be trained on)")
        # the program's text up to the reply: the system prompt, the user turn, the role headers
        segs.append(Segment(text[pos:at], Section.HUMAN, False))
        if turn.quality is not None:
            segs.append(Segment(quality_tag(turn.quality) + "\n", Section.MOSS, False))
        close, _ = _close(tokenizer, text[at + len(mark):])
        segs.append(Segment(turn.moss + close, Section.MOSS, True))
        pos = at + len(mark) + len(close)
    if pos < len(text):
        segs.append(Segment(text[pos:], Section.MOSS, False))  # what the template writes after the last reply
    return [s for s in segs if s.text]


def template_prompt(conv: Conversation, tokenizer, quality: int | None = None) -> str:
    """Text to generate the last reply from: the template's generation prompt after everything
    before it, then the quality tag on its own line when ``quality`` is given (PAT inference)."""
    earlier = [(quality_tag(t.quality) + "\n" if t.quality is not None else "") + t.moss for t in conv.turns]
    msgs = _messages(conv, earlier)[:-1]
    text = _apply(tokenizer, msgs, add_generation_prompt=True)
    return text + (quality_tag(quality) + "\n" if quality is not None else "")


def template_body(reply: str, tokenizer) -> str:
    """A reply as the model writes it after the prompt: its text, then the end-of-turn token."""
    return reply + tokenizer.eos_token


def template_stops(tokenizer) -> tuple[str, ...]:
    """The texts that end a reply in the template format: the end-of-turn token and every other special token."""
    return tuple(dict.fromkeys(t for t in (tokenizer.eos_token, *tokenizer.all_special_tokens) if t))


def conversation_segments(conv: Conversation, tokenizer) -> list[Segment]:
    """The conversation's segments in the format ``tokenizer`` speaks."""
    return template_segments(conv, tokenizer) if uses_template(tokenizer) else segments(conv)


def prompt_text(tokenizer, conv: Conversation, quality: int | None = None) -> str:
    """The generation prompt of the last reply in the format ``tokenizer`` speaks."""
    return template_prompt(conv, tokenizer, quality) if uses_template(tokenizer) else generation_prompt(conv, quality)


def reply_of(tokenizer, generated: str) -> str:
    """The reply body in generated text, in the format ``tokenizer`` speaks: everything before the
    first of :func:`reply_stops`, stripped."""
    return before_first(generated, reply_stops(tokenizer)).strip()


def reply_stops(tokenizer) -> tuple[str, ...]:
    """The texts that end a reply in the format ``tokenizer`` speaks, however the model wrote them (as
    one special token's id, or spelled out in ordinary sub-tokens): in the template format the
    end-of-turn token and every other special token; in MOSS's, ``<eom>`` and MOSS's other special
    tokens (``alignment.chat_format.REPLY_STOPS``), then any other special token of the tokenizer
    (padding, or one a checkpoint brings), as a tool pass ends at them too."""
    if uses_template(tokenizer):
        return template_stops(tokenizer)
    return tuple(dict.fromkeys((*REPLY_STOPS, *(t for t in tokenizer.all_special_tokens if t))))
