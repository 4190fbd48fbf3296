"""Loaders for the lab's data files: MOSS-003 SFT conversations, preference pairs, scored responses.

The file kind comes from the extension: ``.jsonl`` holds one JSON object per line (blank lines are
skipped), ``.json`` holds one object or a list of objects. Every loader reads and validates the whole
file before it returns; the first bad record raises :class:`DataError`, whose message names the file,
the record (``line N`` of a JSONL file or ``item N`` of a JSON list, both counted from 1) and the
problem.

Preference and multi-response records share one context schema::

    {"meta_instruction": str,                      # optional, default chat_format.meta_instruction()
     "history": [{"human": str, "moss": str}, ...],  # optional, earlier rounds in order
     "prompt": str}                                 # required, the last human message

The context becomes a :class:`Conversation` whose last turn is ``Turn(prompt, moss="")``, a
placeholder for the reply: ``context.with_last_reply(reply)`` is the full conversation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alignment import chat_format as cf
from alignment.chat_format import Conversation, Section, Turn

T = TypeVar("T")


class DataError(ValueError):
    """A data file that cannot be loaded: missing, unreadable, or holding a bad record."""


class _Bad(Exception):
    """A problem with one record; :func:`_load` adds the file and the record's place."""


@dataclass(frozen=True)
class SFTExample:
    """One MOSS-003 SFT conversation with its released metadata."""

    conversation: Conversation
    category: str
    conversation_id: str


@dataclass(frozen=True)
class PreferencePair:
    """A context awaiting its last reply, with the better (``chosen``) and worse (``rejected``) reply."""

    context: Conversation
    chosen: str
    rejected: str


@dataclass(frozen=True)
class MultiResponse:
    """A context awaiting its last reply, with candidate replies and one score per candidate."""

    context: Conversation
    responses: tuple[str, ...]
    scores: tuple[float, ...]


def load_moss_sft(path: str | Path) -> list[SFTExample]:
    """Load moss-003-sft-data records (``conversation_id``, ``meta_instruction``, ``num_turns``,
    ``category``, ``chat``) as :class:`SFTExample` objects, in file order.

    Field values carry their role prefix and closing token (``"<|Human|>: hi<eoh>\\n"``); the loader
    keeps the body. A ``<quality: S>`` tag opening a MOSS body goes to ``Turn.quality``.
    """
    return _load(path, _sft_record)


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Load records ``{<context>, "chosen": str, "rejected": str}`` (context schema in the module doc)."""
    return _load(path, _pair_record)


def load_multi_response(path: str | Path) -> list[MultiResponse]:
    """Load records ``{<context>, "responses": [str, ...], "scores": [number, ...]}``: at least two
    responses, one finite score each (context schema in the module doc)."""

    def parse(record: dict[str, Any]) -> MultiResponse:
        context = _context(record)
        responses, scores = _get(record, "responses"), _get(record, "scores")
        if not isinstance(responses, list):
            raise _Bad(f"field 'responses' must be a list of strings, got {_kind(responses)}")
        if len(responses) < 2:
            raise _Bad(f"field 'responses' needs at least 2 responses, got {len(responses)}")
        texts = tuple(_check_body(r, f"field 'responses' entry {i}") for i, r in enumerate(responses, 1))
        if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
            raise _Bad("field 'scores' must be a list of numbers")
        if len(scores) != len(responses):
            raise _Bad(f"length mismatch: {len(responses)} responses but {len(scores)} scores")
        for i, s in enumerate(scores, 1):
            if not math.isfinite(s):
                raise _Bad(f"field 'scores' entry {i} is not finite ({s})")
        return MultiResponse(context, texts, tuple(float(s) for s in scores))

    return _load(path, parse)


# --- reading ---------------------------------------------------------------------------------------


def _load(path: str | Path, parse: Callable[[dict[str, Any]], T]) -> list[T]:
    path = Path(path)
    return _parse_records(path, _records(path), parse)


def _parse_records(path: Path, records: list[tuple[str, Any]], parse: Callable[[dict[str, Any]], T]) -> list[T]:
    """``parse`` applied to each record (from :func:`_records`); a :class:`_Bad` becomes a :class:`DataError`
    naming the file and the record's place."""
    out = []
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise _Bad(f"expected a JSON object, got {_kind(record)}")
            out.append(parse(record))
        except _Bad as e:
            raise DataError(f"{path}: {where}: {e}") from None
    return out


def _records(path: Path) -> list[tuple[str, Any]]:
    """The file's records, each with its place (``line N`` or ``item N``)."""
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: unknown file extension {path.suffix!r} (expected .json or .jsonl)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit in a string
            if line.strip():
                records.append((f"line {n}", _decode(line, path, f"line {n}")))
        return records
    data = _decode(text, path, None)
    items = data if isinstance(data, list) else [data]
    if not items:
        raise DataError(f"{path}: empty file (the JSON list has no items)")
    return [(f"item {i}", item) for i, item in enumerate(items, 1)]


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict, refusing a key that appears twice (``json`` would keep the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _decode(text: str, path: Path, where: str | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        where = where or f"line {e.lineno}"
        raise DataError(f"{path}: {where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except _DuplicateKey as e:
        where = where or _line_of_duplicate(text, e.key)
        raise DataError(f"{path}: {where}: the key {e.key!r} appears twice in one JSON object") from None


def _line_of_duplicate(text: str, key: str) -> str:
    """Where a ``.json`` file repeats ``key`` in one object: ``item N (line L)`` of a top-level list, or
    ``line L`` where the one top-level object starts. The list's items are decoded again one by one."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        return f"line {text.count(chr(10), 0, i) + 1}"
    i += 1
    n = 0
    while True:
        i += len(text[i:]) - len(text[i:].lstrip())
        n += 1
        try:
            _, i = decoder.raw_decode(text, i)
        except _DuplicateKey:
            return f"item {n} (line {text.count(chr(10), 0, i) + 1})"
        i += len(text[i:]) - len(text[i:].lstrip())
        if not text.startswith(",", i):
            return f"a JSON object (key {key!r})"
        i += 1


# --- fields ----------------------------------------------------------------------------------------

_JSON_KINDS = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}


def _kind(value: Any) -> str:
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(obj: dict[str, Any], key: str, owner: str | None = None) -> Any:
    if key not in obj:
        raise _Bad(f"missing field {key!r}" if owner is None else f"{owner} missing key {key!r}")
    return obj[key]


def _check_body(value: Any, name: str, *, allow_empty: bool = False) -> str:
    """``value`` as text that can sit inside a field: a string, non-empty, free of special tokens."""
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a string, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise _Bad(f"{name} must be a non-empty string")
    for token in cf.SPECIAL_TOKENS:
        if token in value:
            raise _Bad(f"{name} contains the special token {token}")
    return value


def _text(record: dict[str, Any], key: str) -> str:
    return _check_body(_get(record, key), f"field {key!r}")


def _context(record: dict[str, Any]) -> Conversation:
    """The context schema's conversation; the prompt is stripped (a human message is written ``" body<eoh>"``)."""
    meta = cf.meta_instruction()
    if "meta_instruction" in record:
        meta = _check_body(record["meta_instruction"], "field 'meta_instruction'", allow_empty=True)
    history = record.get("history", [])
    if not isinstance(history, list):
        raise _Bad(f"field 'history' must be a list of {{'human', 'moss'}} objects, got {_kind(history)}")
    turns = []
    for i, entry in enumerate(history, 1):
        name = f"history entry {i}"
        if not isinstance(entry, dict):
            raise _Bad(f"{name} must be an object with keys 'human' and 'moss', got {_kind(entry)}")
        human = _check_body(_get(entry, "human", name), f"{name} key 'human'")
        turns.append(Turn(human, _check_body(_get(entry, "moss", name), f"{name} key 'moss'")))
    turns.append(Turn(_text(record, "prompt").strip(), moss=""))
    return Conversation(meta, tuple(turns))


def _pair_record(record: dict[str, Any]) -> PreferencePair:
    """A lab pair; replies stripped, as a reply is generated (``chat_format.reply_text``), so that TRL's
    explicit-prompt rows (``" blue."``) read the same as lab rows."""
    return PreferencePair(_context(record), _text(record, "chosen").strip(), _text(record, "rejected").strip())


# --- MOSS-003 SFT ----------------------------------------------------------------------------------

_SFT_KEYS: dict[str, Section] = {
    "Human": Section.HUMAN,
    "Inner Thoughts": Section.INNER_THOUGHTS,
    "Commands": Section.COMMANDS,
    "Tool Responses": Section.RESULTS,
    "MOSS": Section.MOSS,
}


def _sft_record(record: dict[str, Any]) -> SFTExample:
    cid = _get(record, "conversation_id")
    if not (isinstance(cid, str) and cid) and not (isinstance(cid, int) and not isinstance(cid, bool)):
        raise _Bad(f"field 'conversation_id' must be a non-empty string or an integer, got {cid!r}")
    meta = _check_body(_get(record, "meta_instruction"), "field 'meta_instruction'", allow_empty=True)
    category = _text(record, "category")
    chat = _get(record, "chat")
    if not isinstance(chat, dict) or not chat:
        raise _Bad(f"field 'chat' must be a non-empty object of turns, got {_kind(chat)}")
    names = [f"turn_{i}" for i in range(1, len(chat) + 1)]
    for name in names:
        if name not in chat:
            raise _Bad(f"field 'chat' must hold turn_1..turn_{len(chat)}; missing {name!r}")
    num_turns = _get(record, "num_turns")
    if str(num_turns) != str(len(chat)):  # some files write num_turns as a string
        raise _Bad(f"field 'num_turns' is {num_turns!r} but 'chat' has {len(chat)} turns")
    turns = tuple(_sft_turn(chat[name], name) for name in names)
    return SFTExample(Conversation(meta, turns), category, str(cid))


def _sft_turn(turn: Any, name: str) -> Turn:
    if not isinstance(turn, dict):
        raise _Bad(f"{name} must be an object, got {_kind(turn)}")
    # Section values double as Turn field names ("inner_thoughts", ...).
    bodies: dict[str, Any] = {
        s.value: _sft_field(_get(turn, key, name), s, f"{name} field {key!r}") for key, s in _SFT_KEYS.items()
    }
    tag = cf.QUALITY_RE.match(bodies["moss"])
    if tag is None:
        return Turn(**bodies)
    quality = int(tag.group(1))
    if quality > 100:
        raise _Bad(f"{name} field 'MOSS' has quality {quality}, outside 0..100")
    bodies["moss"] = _check_body(bodies["moss"][tag.end() :].removeprefix(" "), f"{name} field 'MOSS'")
    return Turn(**bodies, quality=quality)


def _sft_field(value: Any, section: Section, name: str) -> str | None:
    """The body of ``"<|X|>: body<eox>\\n"``; ``None`` for an unused optional field."""
    optional = section not in (Section.HUMAN, Section.MOSS)
    # Unused fields hold null, or the string "None" in some released files, or even "<|X|>: None<eox>".
    if value is None or value == "None":
        if optional:
            return None
        raise _Bad(f"{name} is null")
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a string or null, got {_kind(value)}")
    prefix, close = f"{cf.ROLE_TOKENS[section]}:", cf.CLOSE_TOKENS[section]
    if not value.startswith(prefix):
        raise _Bad(f"{name} must start with {prefix}")
    text = value.removesuffix("\n")
    if not text.endswith(close):
        raise _Bad(f"{name} without closing {close}")
    body = text[len(prefix) : -len(close)].removeprefix(" ")
    if optional and body == "None":
        return None
    return _check_body(body, name)
