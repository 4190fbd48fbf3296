"""Preference pairs and prompts from user files, in the formats people have.

Files are ``.jsonl`` (one record a line) or ``.json`` (one record or a list), read by the same reader as
:mod:`alignment.data.loaders`; every bad record raises :class:`~alignment.data.loaders.DataError` naming
the file, the record (``line N`` / ``item N``) and the problem. Text holding a MOSS special token
(``<eom>``, ``<|Human|>``, ...) is rejected everywhere. A missing system message / meta instruction
means the default ``chat_format.meta_instruction()``.

Preference formats (:func:`load_preferences`), one record each:

``lab``
    ``{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go.", "history": [{"human": "..", "moss": ".."}]}``
    with ``history`` and ``meta_instruction`` optional (the loaders' context schema).
``hh``
    HH-RLHF ``{"chosen": "\\n\\nHuman: Yo\\n\\nAssistant: Hi!", "rejected": "\\n\\nHuman: Yo\\n\\nAssistant: Go."}``
    Two full transcripts, alternating Human / Assistant and ending with an Assistant reply; everything up
    to that last reply must be the same in both (earlier rounds become history, the last Human message
    the prompt), and the last replies are chosen / rejected.
``trl_conversational``
    TRL's conversational preference format: ``{"prompt": [{"role": "user", "content": "Hi?"}],
    "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "Go."}]}``
    or, with the prompt implicit, ``chosen`` / ``rejected`` as whole conversations whose shared leading
    messages are the prompt (as TRL's ``extract_prompt``). Roles ``system`` (only first: the meta
    instruction), ``user`` and ``assistant`` alternating; the prompt ends with a user message and each
    completion is exactly one assistant message.
``trl_text``
    TRL's standard preference format: ``{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}``
    or, with the prompt implicit, ``{"chosen": "The sky is blue.", "rejected": "The sky is green."}``: the
    longest common prefix of the two, cut back to a word boundary that leaves both replies non-blank, is
    the prompt (TRL's ``extract_prompt`` only moves a trailing space, so it may split a word). The prompt
    (stripped) is one human message; the rest of each string (stripped) is the reply.

Detection (``fmt="auto"``) looks at EVERY record: a list ``prompt`` or ``chosen`` means
``trl_conversational``; else a string ``prompt`` means ``lab`` (the explicit-prompt ``trl_text`` records
are lab records, read the same way: prompt and replies stripped); else a string ``chosen`` that is an
HH-RLHF transcript (after CRLF line ends become LF: it holds ``"\n\nAssistant:"`` and opens with
``Human:`` or holds ``"\n\nHuman:"``) means ``hh``, any other string ``chosen`` ``trl_text``. A file holds
one format: a record of another format than the first is refused, naming its line and both formats.
With an explicit ``fmt=trl_text`` a record that is an HH-RLHF transcript is refused too.

A pair whose chosen reply equals its rejected one (after stripping) carries no preference: it is dropped,
and the count and the first places are logged; a file of only such pairs is refused.

Prompt formats (:func:`load_prompts`), giving :class:`FilePrompt` contexts that end with the prompt:

``prompt``
    ``{"prompt": "Hi?", "history": [{"human": "..", "moss": ".."}], "meta_instruction": "..."}`` (the lab
    context schema; a lab preference file is also a prompt file).
``messages``
    ``{"messages": [{"role": "system", "content": ".."}, {"role": "user", "content": "Hi?"}]}``: a final
    assistant message is dropped, then the last message must be a user message (the prompt). TRL's
    conversational prompt-only ``{"prompt": [messages]}`` is read the same way.
``moss``
    A MOSS-003 SFT record ``{"conversation_id": 1, "meta_instruction": "..", "num_turns": 2, "category": "..",
    "chat": {"turn_1": {...}, "turn_2": {...}}}``: the last Human message is the prompt (its reply dropped),
    earlier turns are history with all their fields; the record's meta instruction is kept.

Prompt detection, record by record (a file holds one format): ``chat`` → ``moss``; ``messages`` or a list
``prompt`` → ``messages``; a string ``prompt`` → ``prompt``.

Pure Python (no torch): loading runs before any compute starts, to validate a run's inputs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alignment import chat_format as cf
from alignment.chat_format import Conversation, Turn
from alignment.data.loaders import (
    DataError,
    PreferencePair,
    _Bad,
    _check_body,
    _context,
    _get,
    _kind,
    _pair_record,
    _parse_records,
    _records,
    _sft_record,
    _text,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

PREFERENCE_FORMATS = ("auto", "lab", "hh", "trl_conversational", "trl_text")
PROMPT_FORMATS = ("auto", "prompt", "messages", "moss")

_PREFERENCE_SHAPES = {
    "lab": '{"prompt": str, "chosen": str, "rejected": str} (+ optional "history", "meta_instruction")',
    "hh": '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}',
    "trl_conversational": '{"prompt": [messages], "chosen": [messages], "rejected": [messages]} (prompt optional)',
    "trl_text": '{"chosen": str, "rejected": str} (prompt implicit: their common start)',
}
_PROMPT_SHAPES = {
    "prompt": '{"prompt": str} (+ optional "history", "meta_instruction")',
    "messages": '{"messages": [{"role", "content"}, ...]}',
    "moss": 'a MOSS-003 SFT record {"conversation_id", "meta_instruction", "num_turns", "category", "chat"}',
}


@dataclass(frozen=True)
class FilePrompt:
    """A prompt from a user file: the interface evaluation shares with ``alignment.world.WorldPrompt``."""

    uid: str  # the first 16 hex digits of the sha256 of generation_prompt(context)
    context: Conversation  # ends with Turn(prompt_text, moss="")

    @classmethod
    def from_context(cls, context: Conversation) -> FilePrompt:
        """The prompt for ``context``, with its content-derived uid."""
        uid = hashlib.sha256(cf.generation_prompt(context).encode("utf-8")).hexdigest()[:16]
        return cls(uid, context)

    @classmethod
    def last_turn_of(cls, conversation: Conversation) -> FilePrompt:
        """The prompt of a whole conversation: its last human turn, the turns before it as history."""
        last = Turn(conversation.turns[-1].human, moss="")
        return cls.from_context(Conversation(conversation.meta_instruction, conversation.turns[:-1] + (last,)))

    def conversation(self, reply: str = "", quality: int | None = None) -> Conversation:
        """The context with its last reply (and quality tag) set."""
        return self.context.with_last_reply(reply, quality)

    @property
    def text(self) -> str:
        """The last human message."""
        return self.context.turns[-1].human


# --- public API ------------------------------------------------------------------------------------


def detect_preference_format(record: Any) -> str:
    """The preference format of one record (the rule is in the module doc); :class:`DataError` if none fits."""
    return _public(_detect_preference, record)


def detect_prompt_format(record: Any) -> str:
    """The prompt format of one record (the rule is in the module doc); :class:`DataError` if none fits."""
    return _public(_detect_prompt, record)


def load_preferences(path: str | Path, fmt: str = "auto") -> list[PreferencePair]:
    """Every record of ``path`` as a :class:`PreferencePair`, in file order; ``fmt`` is one of
    :data:`PREFERENCE_FORMATS` (``auto``: detected record by record, one format a file). Pairs whose
    chosen equals their rejected reply are dropped (logged with their count)."""
    path = Path(path)
    placed = _load_as(path, fmt, _PREFERENCE_PARSERS, _detect_preference)
    same = [where for where, pair in placed if pair.chosen.strip() == pair.rejected.strip()]
    if same:
        if len(same) == len(placed):
            raise DataError(f"{path}: every pair's chosen reply equals its rejected one ({', '.join(same[:3])}"
                            f"{', ...' if len(same) > 3 else ''}): no preference to learn")
        log.warning("%s: dropped %d of %d pairs whose chosen reply equals the rejected one (%s%s)", path, len(same),
                    len(placed), ", ".join(same[:5]), ", ..." if len(same) > 5 else "")
    return [pair for _, pair in placed if pair.chosen.strip() != pair.rejected.strip()]


def load_prompts(path: str | Path, fmt: str = "auto") -> list[FilePrompt]:
    """Every record of ``path`` as a :class:`FilePrompt`, in file order; ``fmt`` is one of
    :data:`PROMPT_FORMATS` (``auto``: detected record by record, one format a file)."""
    return [item for _, item in _load_as(path, fmt, _PROMPT_PARSERS, _detect_prompt)]


# --- loading ---------------------------------------------------------------------------------------


def _public(detect: Callable[[Any], str], record: Any) -> str:
    try:
        return detect(record)
    except _Bad as e:
        raise DataError(str(e)) from None


def _load_as(
    path: str | Path,
    fmt: str,
    parsers: dict[str, Callable[[dict[str, Any]], T]],
    detect: Callable[[Any], str],
) -> list[tuple[str, T]]:
    """Each record parsed, with its place; ``auto`` detects every record's format and refuses a file
    that mixes formats, naming the first record that differs."""
    if fmt != "auto" and fmt not in parsers:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(['auto', *parsers])}")
    path = Path(path)
    records = _records(path)
    places = [where for where, _ in records]
    if fmt != "auto":
        return list(zip(places, _parse_records(path, records, parsers[fmt])))
    [first] = _parse_records(path, records[:1], detect)
    parse = parsers[first]
    hint = f" (the file is read as format {first!r}, detected from {records[0][0]}; pass fmt= to choose another)"

    def parse_detected(record: dict[str, Any]) -> T:
        try:
            found: str | None = detect(record)
        except _Bad:
            found = None
        try:
            out = parse(record)
        except _Bad as e:
            looks = "" if found in (None, first) else f"; this record looks like format {found!r}, and a file holds one"
            raise _Bad(f"{e}{hint}{looks}") from None
        if found is not None and found != first:
            raise _Bad(f"a {found!r} record, but {records[0][0]} is a {first!r} record; a file holds one format "
                       "(fix the record, or pass fmt= to read every record as one format)")
        return out

    return list(zip(places, _parse_records(path, records, parse_detected)))


def _unknown(record: dict[str, Any], what: str, shapes: dict[str, str]) -> _Bad:
    keys = ", ".join(repr(k) for k in record) or "none"
    listed = "; ".join(f"{name} {shape}" for name, shape in shapes.items())
    return _Bad(f"cannot tell the {what} format from this record (keys: {keys}); the formats are: {listed}")


def _detect_preference(record: Any) -> str:
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object, got {_kind(record)}")
    prompt, chosen = record.get("prompt"), record.get("chosen")
    if isinstance(prompt, list) or isinstance(chosen, list):
        return "trl_conversational"
    if isinstance(prompt, str):
        return "lab"
    if isinstance(chosen, str):
        return "hh" if _is_hh(chosen) else "trl_text"
    raise _unknown(record, "preference", _PREFERENCE_SHAPES)


def _detect_prompt(record: Any) -> str:
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object, got {_kind(record)}")
    if "chat" in record:
        return "moss"
    if "messages" in record or isinstance(record.get("prompt"), list):
        return "messages"
    if "prompt" in record:
        return "prompt"
    raise _unknown(record, "prompt", _PROMPT_SHAPES)


# --- role/content messages (TRL, chat templates) ---------------------------------------------------

_ROLES = ("system", "user", "assistant")
_Message = tuple[str, str]  # (role, content)


def _messages(value: Any, name: str) -> list[_Message]:
    """``value`` as a list of ``{"role", "content"}`` messages with known roles and clean text."""
    if not isinstance(value, list):
        raise _Bad(f"{name} must be a list of {{'role', 'content'}} messages, got {_kind(value)}")
    if not value:
        raise _Bad(f"{name} must hold at least one message")
    out = []
    for i, message in enumerate(value, 1):
        where = f"{name} message {i}"
        if not isinstance(message, dict):
            raise _Bad(f"{where} must be an object with keys 'role' and 'content', got {_kind(message)}")
        role = _get(message, "role", where)
        if role not in _ROLES:
            raise _Bad(f"{where} has role {role!r}; expected one of {', '.join(map(repr, _ROLES))}")
        content = _check_body(_get(message, "content", where), f"{where} key 'content'", allow_empty=role == "system")
        out.append((role, content))
    return out


def _messages_context(messages: list[_Message], name: str) -> Conversation:
    """A context from messages: an optional leading system message (the meta instruction), then user and
    assistant messages alternating, ending with the user message that is the prompt."""
    meta, first = cf.meta_instruction(), 0
    if messages and messages[0][0] == "system":
        meta, first = messages[0][1], 1
    body = messages[first:]
    for i, (role, _) in enumerate(body):
        where = f"{name} message {first + i + 1}"
        if role == "system":
            raise _Bad(f"{where}: a system message may only come first")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise _Bad(f"{where} is {role!r} where {expected!r} belongs: user and assistant must alternate")
    if not body or body[-1][0] != "user":
        raise _Bad(f"{name} must end with a user message (the prompt)")
    history = tuple(Turn(user, reply) for (_, user), (_, reply) in zip(body[0:-1:2], body[1::2]))
    return Conversation(meta, history + (Turn(body[-1][1], moss=""),))


def _one_reply(messages: list[_Message], name: str) -> str:
    if len(messages) != 1 or messages[0][0] != "assistant":
        roles = ", ".join(role for role, _ in messages) or "no messages"
        raise _Bad(f"{name} must be exactly one assistant message, got {roles}")
    return messages[0][1]


def _trl_conversational(record: dict[str, Any]) -> PreferencePair:
    chosen = _messages(_get(record, "chosen"), "field 'chosen'")
    rejected = _messages(_get(record, "rejected"), "field 'rejected'")
    if "prompt" in record:
        context = _messages_context(_messages(record["prompt"], "field 'prompt'"), "field 'prompt'")
        return PreferencePair(context, _one_reply(chosen, "field 'chosen'"), _one_reply(rejected, "field 'rejected'"))
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise _Bad("fields 'chosen' and 'rejected' share no leading message: the implicit prompt is empty")
    context = _messages_context(chosen[:shared], "the implicit prompt (the messages 'chosen' and 'rejected' share)")
    after = "after the implicit prompt"
    return PreferencePair(
        context,
        _one_reply(chosen[shared:], f"field 'chosen' {after}"),
        _one_reply(rejected[shared:], f"field 'rejected' {after}"),
    )


# --- Anthropic HH-RLHF transcripts -----------------------------------------------------------------

_HH_SPLIT = re.compile(r"\n\n(Human|Assistant):")  # fixed text, no repetition: it cannot backtrack


def _hh_text(text: str) -> str:
    """An HH-RLHF transcript as the parser reads it: CRLF (and lone CR) line ends as LF, and a first
    ``Human:`` that lacks its leading blank line given one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.lstrip().startswith("Human:"):
        text = "\n\n" + text.lstrip()
    return text


def _is_hh(text: str) -> bool:
    """Whether ``text`` is an HH-RLHF transcript: a Human turn and an Assistant turn (see :func:`_hh_text`)."""
    text = _hh_text(text)
    return "\n\nHuman:" in text and "\n\nAssistant:" in text


def _hh_messages(record: dict[str, Any], key: str) -> list[_Message]:
    """The transcript in ``record[key]`` as (role, body) pairs: alternating, from Human to Assistant."""
    name = f"field {key!r}"
    parts = _HH_SPLIT.split(_hh_text(_text(record, key)))
    if "Human" not in parts[1::2]:
        raise _Bad(f"{name} has no '\\n\\nHuman:' turn")
    if parts[0].strip():
        raise _Bad(f"{name} has text before its first '\\n\\nHuman:' turn")
    roles = parts[1::2]
    for i, role in enumerate(roles):
        expected = ("Human", "Assistant")[i % 2]
        if role != expected:
            raise _Bad(f"{name} message {i + 1} is {role} where {expected} belongs: Human and Assistant must alternate")
    if roles[-1] != "Assistant":
        raise _Bad(f"{name} must end with an Assistant reply")
    return [
        (role, _check_body(body.removeprefix(" "), f"{name} {role} message {i // 2 + 1}"))
        for i, (role, body) in enumerate(zip(roles, parts[2::2]))
    ]


def _hh(record: dict[str, Any]) -> PreferencePair:
    chosen, rejected = _hh_messages(record, "chosen"), _hh_messages(record, "rejected")
    if chosen[:-1] != rejected[:-1]:
        differ = next((i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r), min(len(chosen), len(rejected)))
        raise _Bad(
            "fields 'chosen' and 'rejected' must share everything before their last Assistant reply; "
            f"they differ at message {differ + 1}"
        )
    body = chosen[:-1]
    history = tuple(Turn(human, reply) for (_, human), (_, reply) in zip(body[0::2], body[1::2]))
    context = Conversation(cf.meta_instruction(), history + (Turn(body[-1][1], moss=""),))
    return PreferencePair(context, chosen[-1][1], rejected[-1][1])


# --- TRL plain text --------------------------------------------------------------------------------


def _word_prefix(a: str, b: str) -> int:
    """Where the implicit prompt of ``a`` and ``b`` ends: their longest common prefix, cut back until no word is
    split (the cut follows whitespace, or both strings end or continue with whitespace there) and both strings
    keep a non-blank rest."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    # a[k:] is non-blank iff k <= the index of a's last non-space character: no rescans, linear work
    last_a = len(a.rstrip()) - 1
    last_b = len(b.rstrip()) - 1

    def fits(k: int) -> bool:
        whole = a[k - 1].isspace() or all(k == len(s) or s[k].isspace() for s in (a, b))
        return whole and k <= last_a and k <= last_b

    while n > 0 and not fits(n):
        n -= 1
    return n


def _trl_text(record: dict[str, Any]) -> PreferencePair:
    chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if "prompt" not in record and _is_hh(text):
            raise _Bad(f"field {key!r} is an HH-RLHF transcript (Human: / Assistant: turns), not plain text; "
                       "read the file as format 'hh'")
    if "prompt" in record:
        prompt, cut = _text(record, "prompt").strip(), 0
    else:
        cut = _word_prefix(chosen, rejected)
        prompt = chosen[:cut].strip()
        if not prompt:
            raise _Bad("the implicit prompt (the common start of fields 'chosen' and 'rejected') is empty")
    after = "" if "prompt" in record else " after the implicit prompt"
    return PreferencePair(
        Conversation(cf.meta_instruction(), (Turn(prompt, moss=""),)),
        _check_body(chosen[cut:].strip(), f"field 'chosen'{after}"),
        _check_body(rejected[cut:].strip(), f"field 'rejected'{after}"),
    )


_PREFERENCE_PARSERS: dict[str, Callable[[dict[str, Any]], PreferencePair]] = {
    "lab": _pair_record,
    "hh": _hh,
    "trl_conversational": _trl_conversational,
    "trl_text": _trl_text,
}

# --- prompts ---------------------------------------------------------------------------------------


def _prompt_record(record: dict[str, Any]) -> FilePrompt:
    return FilePrompt.from_context(_context(record))


def _messages_record(record: dict[str, Any]) -> FilePrompt:
    key = "messages" if "messages" in record or "prompt" not in record else "prompt"
    name = f"field {key!r}"
    messages = _messages(_get(record, key), name)
    if messages[-1][0] == "assistant":
        messages = messages[:-1]
    return FilePrompt.from_context(_messages_context(messages, name))


def _moss_record(record: dict[str, Any]) -> FilePrompt:
    return FilePrompt.last_turn_of(_sft_record(record).conversation)


_PROMPT_PARSERS: dict[str, Callable[[dict[str, Any]], FilePrompt]] = {
    "prompt": _prompt_record,
    "messages": _messages_record,
    "moss": _moss_record,
}
