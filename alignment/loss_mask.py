"""Token ids and loss masks, built from the format's segments (never by string search).

The default policy puts loss on what the model writes: the MOSS reply, Inner Thoughts and
Commands (body and closing token). Results are written by the tools and never get loss
(MOSS §8.2). Human turns and the meta-instruction can be switched on for full-LM training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alignment.chat_format import Conversation, Section
from alignment.template_format import conversation_segments

DEFAULT_LOSS_ON: tuple[str, ...] = ("moss", "inner_thoughts", "commands")


@dataclass(frozen=True)
class LossPolicy:
    """Which sections carry loss. ``last_turn_only`` keeps loss on the final round alone."""

    sections: frozenset[Section]
    last_turn_only: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str], last_turn_only: bool = False) -> LossPolicy:
        valid = {s.value: s for s in Section}
        chosen = set()
        for name in names:
            if name not in valid:
                raise ValueError(f"unknown loss section {name!r}; choose from {sorted(valid)}")
            if name == Section.RESULTS.value:
                raise ValueError("Results are written by tools and never get loss (MOSS §8.2)")
            chosen.add(valid[name])
        return cls(frozenset(chosen), last_turn_only)

    def wants(self, section: Section, model_written: bool) -> bool:
        if section not in self.sections or section is Section.RESULTS:
            return False
        # Model-written sections get loss on what the model writes; program-written ones
        # (meta, human) get loss on all their text when switched on.
        if section in (Section.META, Section.HUMAN):
            return True
        return model_written


DEFAULT_POLICY = LossPolicy.from_names(DEFAULT_LOSS_ON)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]


def encode(conv: Conversation, tokenizer, policy: LossPolicy = DEFAULT_POLICY) -> Encoded:
    """Tokenize a conversation segment by segment; the mask marks tokens that get loss."""
    return encode_many([conv], tokenizer, policy)[0]


def encode_many(convs: Sequence[Conversation], tokenizer, policy: LossPolicy = DEFAULT_POLICY) -> list[Encoded]:
    """``encode`` of each conversation, in the format ``tokenizer`` speaks (MOSS, or its chat
    template: ``alignment.template_format``). Every distinct segment text is tokenized once, in one
    batch: the meta-instruction and the role prefixes repeat in every conversation (on the
    built-in world, 80,000 segments of 8,000 conversations hold 12,000 distinct texts)."""
    all_segs = [conversation_segments(conv, tokenizer) for conv in convs]
    texts = list(dict.fromkeys(seg.text for segs in all_segs for seg in segs))
    ids_of = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}
    out = []
    for segs in all_segs:
        ids: list[int] = []
        mask: list[int] = []
        last_turn_start = _last_turn_start(segs)
        for i, seg in enumerate(segs):
            on = policy.wants(seg.section, seg.model_written)
            if policy.last_turn_only and i < last_turn_start:
                on = False
            piece = ids_of[seg.text]
            ids.extend(piece)
            mask.extend([int(on)] * len(piece))
        out.append(Encoded(ids, mask))
    return out


def _last_turn_start(segs: Sequence) -> int:
    """Index of the first segment of the last human turn (a human segment after a non-human one)."""
    for i in range(len(segs) - 1, 0, -1):
        if segs[i].section is Section.HUMAN and segs[i - 1].section is not Section.HUMAN:
            return i
    return 0


def truncate(enc: Encoded, max_length: int) -> Encoded:
    """Keep the last ``max_length`` tokens (the reply under training sits at the end)."""
    if len(enc.input_ids) <= max_length:
        return enc
    return Encoded(enc.input_ids[-max_length:], enc.loss_mask[-max_length:])
