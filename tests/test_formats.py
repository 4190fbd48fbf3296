from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

import pytest

from alignment import chat_format as cf
from alignment.chat_format import Conversation, Turn
from alignment.data.formats import (
    PREFERENCE_FORMATS,
    PROMPT_FORMATS,
    FilePrompt,
    detect_preference_format,
    detect_prompt_format,
    load_preferences,
    load_prompts,
)
from alignment.data.loaders import DataError, PreferencePair

META = cf.meta_instruction()


def _write(path: Path, rows: list) -> Path:
    """A JSONL file; a row that is a string is written as is (for broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def _fails_at_line_3(load, path: Path, problem: str) -> None:
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 3: "), message
    assert problem in message, message


def _ctx(*turns: Turn, meta: str = META) -> Conversation:
    return Conversation(meta, turns)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# --- preference formats ----------------------------------------------------------------------------

LAB = {
    "meta_instruction": "You are MOSS.\n",
    "history": [{"human": "Hi", "moss": "Hello!"}],
    "prompt": "And now?",
    "chosen": "Happy to help.",
    "rejected": "Go away.",
}
HH = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant: "
    "Why did the chicken cross the road?",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant: No.",
}
TRL_CONV = {
    "prompt": [
        _msg("system", "Be brief."),
        _msg("user", "Sky colour?"),
        _msg("assistant", "Blue."),
        _msg("user", "Why?"),
    ],
    "chosen": [_msg("assistant", "Rayleigh scattering.")],
    "rejected": [_msg("assistant", "Magic.")],
}
TRL_CONV_IMPLICIT = {
    "chosen": [_msg("system", "Be brief."), _msg("user", "Sky colour?"), _msg("assistant", "Blue.")],
    "rejected": [_msg("system", "Be brief."), _msg("user", "Sky colour?"), _msg("assistant", "Green.")],
}
TRL_TEXT = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
TRL_TEXT_IMPLICIT = {"chosen": "The sky is blue.", "rejected": "The sky is black."}


def test_lab(tmp_path: Path) -> None:
    [pair] = load_preferences(_write(tmp_path / "p.jsonl", [LAB]), "lab")
    assert pair == PreferencePair(
        _ctx(Turn("Hi", "Hello!"), Turn("And now?", ""), meta="You are MOSS.\n"), "Happy to help.", "Go away."
    )


def test_hh_multi_turn(tmp_path: Path) -> None:
    [pair] = load_preferences(_write(tmp_path / "hh.jsonl", [HH]), "hh")
    assert pair == PreferencePair(
        _ctx(Turn("Hi there", "Hello! How can I help?"), Turn("Tell me a joke.", "")),
        "Why did the chicken cross the road?",
        "No.",
    )
    assert cf.render(pair.context.with_last_reply(pair.rejected)).endswith(
        "<|Human|>: Tell me a joke.<eoh>\n<|MOSS|>: No.<eom>\n"
    )


def test_trl_conversational_explicit_prompt_with_system(tmp_path: Path) -> None:
    [pair] = load_preferences(_write(tmp_path / "c.jsonl", [TRL_CONV]), "trl_conversational")
    assert pair == PreferencePair(
        _ctx(Turn("Sky colour?", "Blue."), Turn("Why?", ""), meta="Be brief."), "Rayleigh scattering.", "Magic."
    )


def test_trl_conversational_implicit_prompt(tmp_path: Path) -> None:
    no_system = {k: v[1:] for k, v in TRL_CONV_IMPLICIT.items()}
    with_system, default_meta = load_preferences(_write(tmp_path / "c.jsonl", [TRL_CONV_IMPLICIT, no_system]))
    assert with_system == PreferencePair(_ctx(Turn("Sky colour?", ""), meta="Be brief."), "Blue.", "Green.")
    assert default_meta == PreferencePair(_ctx(Turn("Sky colour?", "")), "Blue.", "Green.")


def test_trl_text_explicit_prompt(tmp_path: Path) -> None:
    [pair] = load_preferences(_write(tmp_path / "t.jsonl", [TRL_TEXT]), "trl_text")
    assert pair == PreferencePair(_ctx(Turn("The sky is", "")), "blue.", "green.")


def test_trl_text_implicit_prompt_keeps_words_whole(tmp_path: Path) -> None:
    rows = [
        TRL_TEXT_IMPLICIT,  # common prefix "The sky is bl": cut back to "The sky is"
        {"chosen": "Q: capital of France?\nParis.", "rejected": "Q: capital of France?\nLyon."},
        {"chosen": "Say hi. Hi", "rejected": "Say hi. Hi there"},  # the prefix ends where both words end
    ]
    first, second, third = load_preferences(_write(tmp_path / "t.jsonl", rows), "trl_text")
    assert first == PreferencePair(_ctx(Turn("The sky is", "")), "blue.", "black.")
    assert second == PreferencePair(_ctx(Turn("Q: capital of France?", "")), "Paris.", "Lyon.")
    assert third == PreferencePair(_ctx(Turn("Say hi.", "")), "Hi", "Hi there")


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (LAB, "lab"),
        (TRL_TEXT, "lab"),  # an explicit-prompt TRL text record is a lab record
        (HH, "hh"),
        (TRL_CONV, "trl_conversational"),
        (TRL_CONV_IMPLICIT, "trl_conversational"),
        (TRL_TEXT_IMPLICIT, "trl_text"),
    ],
)
def test_auto_detects_preference_format(tmp_path: Path, row: dict, fmt: str) -> None:
    assert detect_preference_format(row) == fmt
    path = _write(tmp_path / "p.jsonl", [row, row])
    assert load_preferences(path) == load_preferences(path, fmt)


def test_json_list_file(tmp_path: Path) -> None:
    path = tmp_path / "hh.json"
    path.write_text(json.dumps([HH, HH]), "utf-8")
    assert [p.rejected for p in load_preferences(path)] == ["No.", "No."]


def test_detect_rejects_unknown_record() -> None:
    with pytest.raises(DataError) as info:
        detect_preference_format({"question": "q", "answer": "a"})
    message = str(info.value)
    assert "'question', 'answer'" in message
    assert all(fmt in message for fmt in PREFERENCE_FORMATS[1:])
    with pytest.raises(DataError, match="expected a JSON object, got list"):
        detect_prompt_format([1])


def test_unknown_fmt_lists_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [LAB])
    with pytest.raises(ValueError, match="auto, lab, hh, trl_conversational, trl_text"):
        load_preferences(path, "dpo")
    with pytest.raises(ValueError, match="auto, prompt, messages, moss"):
        load_prompts(path, "chat")


def _hh(*messages: tuple[str, str]) -> str:
    return "".join(f"\n\n{role}: {text}" for role, text in messages)


H, A = "Human", "Assistant"
BAD_PREFERENCES = [
    ("bad JSON", None, '{"prompt": "p",', "invalid JSON"),
    ("wrong type", "lab", {"prompt": "p", "chosen": 3, "rejected": "r"}, "field 'chosen' must be a string, got number"),
    ("missing field", "lab", {"prompt": "p", "chosen": "c"}, "missing field 'rejected'"),
    (
        "roles not alternating",
        "trl_conversational",
        {**TRL_CONV, "prompt": [_msg("user", "a"), _msg("user", "b")]},
        "field 'prompt' message 2 is 'user' where 'assistant' belongs",
    ),
    (
        "system not first",
        "trl_conversational",
        {**TRL_CONV, "prompt": [_msg("user", "a"), _msg("system", "b")]},
        "field 'prompt' message 2: a system message may only come first",
    ),
    (
        "two-message completion",
        "trl_conversational",
        {**TRL_CONV, "chosen": [_msg("assistant", "a"), _msg("user", "b")]},
        "field 'chosen' must be exactly one assistant message, got assistant, user",
    ),
    (
        "implicit prompt ending with assistant",
        "trl_conversational",
        {
            "chosen": [_msg("user", "q"), _msg("assistant", "a"), _msg("user", "x")],
            "rejected": [_msg("user", "q"), _msg("assistant", "a")],
        },
        "must end with a user message",
    ),
    (
        "HH without Assistant",
        "hh",
        {"chosen": _hh((H, "q")), "rejected": _hh((H, "q"), (A, "a"))},
        "end with an Assistant",
    ),
    ("HH without Human", "hh", {"chosen": "just text", "rejected": "x"}, "field 'chosen' has no '\\n\\nHuman:' turn"),
    (
        "HH not alternating",
        "hh",
        {"chosen": _hh((H, "q"), (H, "q2"), (A, "a")), "rejected": _hh((H, "q"), (A, "a"))},
        "field 'chosen' message 2 is Human where Assistant belongs",
    ),
    (
        "HH context mismatch",
        "hh",
        {
            "chosen": _hh((H, "q"), (A, "a"), (H, "r"), (A, "x")),
            "rejected": _hh((H, "q"), (A, "b"), (H, "r"), (A, "y")),
        },
        "must share everything before their last Assistant reply; they differ at message 2",
    ),
    (
        "HH empty reply",
        "hh",
        {"chosen": _hh((H, "q"), (A, "")), "rejected": _hh((H, "q"), (A, "a"))},
        "field 'chosen' Assistant message 1 must be a non-empty string",
    ),
    (
        "empty implicit prompt",
        "trl_text",
        {"chosen": "Blue sky.", "rejected": "Bleak sky."},
        "the implicit prompt (the common start of fields 'chosen' and 'rejected') is empty",
    ),
    (
        "empty implicit conversational prompt",
        "trl_conversational",
        {"chosen": [_msg("user", "a")], "rejected": [_msg("user", "b")]},
        "the implicit prompt is empty",
    ),
    (
        "special token in text",
        "trl_text",
        {"chosen": "The sky is blue<eom>", "rejected": "The sky is green"},
        "field 'chosen' contains the special token <eom>",
    ),
    (
        "special token in message",
        "trl_conversational",
        {**TRL_CONV, "rejected": [_msg("assistant", "<|Human|>: hi")]},
        "field 'rejected' message 1 key 'content' contains the special token <|Human|>",
    ),
    ("unknown role", "trl_conversational", {**TRL_CONV, "chosen": [_msg("tool", "x")]}, "has role 'tool'"),
]


@pytest.mark.parametrize(
    ("fmt", "row", "problem"), [c[1:] for c in BAD_PREFERENCES], ids=[c[0] for c in BAD_PREFERENCES]
)
def test_bad_preference_row(tmp_path: Path, fmt: str | None, row, problem: str) -> None:
    good = {"lab": LAB, "hh": HH, "trl_conversational": TRL_CONV, "trl_text": TRL_TEXT_IMPLICIT, None: LAB}[fmt]
    path = _write(tmp_path / "prefs.jsonl", [good, "", row])
    for mode in ("auto", fmt or "lab"):  # the first row fixes the format; naming it gives the same error
        _fails_at_line_3(functools.partial(load_preferences, fmt=mode), path, problem)


def test_later_row_in_another_format(tmp_path: Path) -> None:
    path = _write(tmp_path / "prefs.jsonl", [HH, TRL_TEXT_IMPLICIT])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert str(info.value) == (
        f"{path}: line 2: field 'chosen' has no '\\n\\nHuman:' turn"
        " (the file is read as format 'hh', detected from line 1; pass fmt= to choose another)"
        "; this record looks like format 'trl_text', and a file holds one"
    )


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


MULTI_HH = {"chosen": _hh((H, "Hi"), (A, "Hello."), (H, "A joke?"), (A, "Knock knock.")),
            "rejected": _hh((H, "Hi"), (A, "Hello."), (H, "A joke?"), (A, "No."))}


@pytest.mark.parametrize("first", [
    {"chosen": _crlf(HH["chosen"]), "rejected": _crlf(HH["rejected"])},  # CRLF line ends
    {"chosen": HH["chosen"].lstrip("\n"), "rejected": HH["rejected"].lstrip("\n")},  # no leading blank line
])
def test_misleading_first_hh_record_reads_the_file_as_hh(tmp_path: Path, first: dict) -> None:
    path = _write(tmp_path / "hh.jsonl", [first, MULTI_HH, MULTI_HH])
    pairs = load_preferences(path)
    assert pairs[0] == load_preferences(_write(tmp_path / "clean.jsonl", [HH]), "hh")[0]
    for pair in pairs[1:]:  # the multi-turn records keep their history, no markers inside a human turn
        assert [t.human for t in pair.context.turns] == ["Hi", "A joke?"]
        assert pair.context.turns[0].moss == "Hello." and pair.chosen == "Knock knock."
        assert "Human:" not in pair.context.turns[-1].human


def test_mixed_records_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "mixed.jsonl", [TRL_TEXT_IMPLICIT, TRL_TEXT_IMPLICIT, MULTI_HH])
    with pytest.raises(DataError, match=r"mixed\.jsonl: line 3: field 'chosen' is an HH-RLHF transcript.*"
                                        r"looks like format 'hh'"):
        load_preferences(path)
    with pytest.raises(DataError, match=r"mixed\.jsonl: line 3: field 'chosen' is an HH-RLHF transcript"):
        load_preferences(path, "trl_text")  # an explicit format does not read a transcript as plain text
    path = _write(tmp_path / "mixed2.jsonl", [LAB, TRL_CONV])
    with pytest.raises(DataError, match=r"mixed2\.jsonl: line 2: .*looks like format 'trl_conversational'"):
        load_preferences(path)
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "Hi?"}, {"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match=r"prompts\.jsonl: line 2: .*looks like format 'messages'"):
        load_prompts(prompts)


def test_explicit_prompt_trl_rows_read_alike_with_auto_and_trl_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "trl.jsonl", [TRL_TEXT])
    [auto], [explicit] = load_preferences(path), load_preferences(path, "trl_text")
    assert auto == explicit and auto.chosen == "blue." and auto.context.turns[-1].human == "The sky is"


def test_duplicated_keys_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(LAB) + "\n" + '{"prompt": "p", "chosen": "good", "rejected": "bad", "chosen": "bad"}\n',
                    "utf-8")
    with pytest.raises(DataError, match=r"dup\.jsonl: line 2: the key 'chosen' appears twice"):
        load_preferences(path)
    path = tmp_path / "dup.json"
    path.write_text('[\n {"prompt": "p", "chosen": "c", "rejected": "r"},\n {"prompt": "p",\n  "history": [{"human": '
                    '"h", "moss": "m", "human": "x"}], "chosen": "c", "rejected": "r"}\n]', "utf-8")
    with pytest.raises(DataError, match=r"dup\.json: item 2 \(line 3\): the key 'human' appears twice"):
        load_preferences(path)


def test_pairs_whose_chosen_equals_rejected_are_dropped_with_a_count(tmp_path: Path, caplog) -> None:
    same = {"prompt": "p", "chosen": "Same.", "rejected": " Same. "}
    path = _write(tmp_path / "same.jsonl", [LAB, same, LAB, same])
    with caplog.at_level("WARNING"):
        pairs = load_preferences(path)
    assert pairs == load_preferences(_write(tmp_path / "lab.jsonl", [LAB, LAB]))
    assert "dropped 2 of 4 pairs whose chosen reply equals the rejected one (line 2, line 4)" in caplog.text
    with pytest.raises(DataError, match=r"only\.jsonl: every pair's chosen reply equals its rejected one \(line 1\)"):
        load_preferences(_write(tmp_path / "only.jsonl", [same]))


def test_first_row_fits_no_format(tmp_path: Path) -> None:
    path = _write(tmp_path / "prefs.jsonl", [{"text": "x"}, LAB])
    with pytest.raises(DataError, match=r"prefs\.jsonl: line 1: cannot tell the preference format"):
        load_preferences(path)


# --- prompt formats --------------------------------------------------------------------------------


def _moss_turn(human: str, moss: str, thoughts: str | None = None) -> dict:
    return {
        "Human": f"<|Human|>: {human}<eoh>\n",
        "Inner Thoughts": thoughts and f"<|Inner Thoughts|>: {thoughts}<eot>\n",
        "Commands": None,
        "Tool Responses": None,
        "MOSS": f"<|MOSS|>: {moss}<eom>\n",
    }


MOSS_META = cf.meta_instruction(cf.ToolSwitch(inner_thoughts=True))
MOSS_ROW = {
    "conversation_id": 7,
    "meta_instruction": MOSS_META,
    "num_turns": 2,
    "category": "math",
    "chat": {
        "turn_1": _moss_turn("Hi", "<quality: 80> Hello!", thoughts="Greet back."),
        "turn_2": _moss_turn("What is 2+2?", "4.", thoughts="Easy sum."),
    },
}
PROMPT_ROW = {"prompt": "And now?", "history": [{"human": "Hi", "moss": "Hello!"}]}
MESSAGES_ROW = {
    "messages": [_msg("system", "Be brief."), _msg("user", "Hi"), _msg("assistant", "Hello!"), _msg("user", "And now?")]
}


def test_prompt_files_in_each_format(tmp_path: Path) -> None:
    [plain] = load_prompts(_write(tmp_path / "a.jsonl", [PROMPT_ROW]), "prompt")
    assert plain.context == _ctx(Turn("Hi", "Hello!"), Turn("And now?", ""))
    [messages] = load_prompts(_write(tmp_path / "b.jsonl", [MESSAGES_ROW]), "messages")
    assert messages.context == _ctx(Turn("Hi", "Hello!"), Turn("And now?", ""), meta="Be brief.")
    [moss] = load_prompts(_write(tmp_path / "c.jsonl", [MOSS_ROW]), "moss")
    assert moss.context == _ctx(
        Turn("Hi", "Hello!", inner_thoughts="Greet back.", quality=80), Turn("What is 2+2?", ""), meta=MOSS_META
    )
    assert moss.text == "What is 2+2?"


def test_messages_prompt_drops_final_assistant_reply(tmp_path: Path) -> None:
    row = {"messages": [_msg("user", "Hi"), _msg("assistant", "Hello!")]}
    trl_prompt_only = {"prompt": [_msg("user", "Hi")]}
    first, second = load_prompts(_write(tmp_path / "m.jsonl", [row, trl_prompt_only]))
    assert first == second == FilePrompt.from_context(_ctx(Turn("Hi", "")))


def test_file_prompt_interface() -> None:
    prompt = FilePrompt.from_context(_ctx(Turn("Hi", "Hello!"), Turn("And now?", "")))
    assert prompt.uid == hashlib.sha256(cf.generation_prompt(prompt.context).encode()).hexdigest()[:16]
    assert prompt.text == "And now?"
    assert prompt.conversation() == prompt.context
    assert prompt.conversation("Sure.", quality=90) == _ctx(Turn("Hi", "Hello!"), Turn("And now?", "Sure.", quality=90))
    other = FilePrompt.from_context(_ctx(Turn("And now?", "")))
    assert other.uid != prompt.uid and len(other.uid) == 16


@pytest.mark.parametrize(
    ("row", "fmt"),
    [(PROMPT_ROW, "prompt"), (LAB, "prompt"), (MESSAGES_ROW, "messages"), (TRL_CONV, "messages"), (MOSS_ROW, "moss")],
)
def test_auto_detects_prompt_format(tmp_path: Path, row: dict, fmt: str) -> None:
    assert detect_prompt_format(row) == fmt
    path = tmp_path / "p.json"
    path.write_text(json.dumps([row]), "utf-8")
    assert load_prompts(path) == load_prompts(path, fmt)
    assert fmt in PROMPT_FORMATS


BAD_PROMPTS = [
    ("bad JSON", PROMPT_ROW, "{", "invalid JSON"),
    ("wrong type", PROMPT_ROW, {"prompt": 3}, "field 'prompt' must be a string, got number"),
    ("missing field", MOSS_ROW, {k: v for k, v in MOSS_ROW.items() if k != "category"}, "missing field 'category'"),
    (
        "messages end without a user turn",
        MESSAGES_ROW,
        {"messages": [_msg("system", "s"), _msg("assistant", "a")]},
        "field 'messages' must end with a user message",
    ),
    (
        "messages not alternating",
        MESSAGES_ROW,
        {"messages": [_msg("user", "a"), _msg("user", "b")]},
        "field 'messages' message 2 is 'user' where 'assistant' belongs",
    ),
    ("special token", PROMPT_ROW, {"prompt": "hi<eoh>"}, "field 'prompt' contains the special token <eoh>"),
    (
        "later row in another format",
        MESSAGES_ROW,
        PROMPT_ROW,
        "field 'prompt' must be a list of {'role', 'content'} messages, got string"
        " (the file is read as format 'messages', detected from line 1",
    ),
]


@pytest.mark.parametrize(("good", "row", "problem"), [c[1:] for c in BAD_PROMPTS], ids=[c[0] for c in BAD_PROMPTS])
def test_bad_prompt_row(tmp_path: Path, good: dict, row, problem: str) -> None:
    path = _write(tmp_path / "prompts.jsonl", [good, good, row])
    _fails_at_line_3(load_prompts, path, problem)


def test_no_torch_import() -> None:
    import subprocess

    code = "import sys, alignment.data.formats; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    assert out.stdout.strip() == "False"
