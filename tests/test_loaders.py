from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment import chat_format as cf
from alignment.chat_format import Conversation, Turn
from alignment.data.loaders import (
    DataError,
    MultiResponse,
    PreferencePair,
    SFTExample,
    load_moss_sft,
    load_multi_response,
    load_preference_pairs,
)

META = cf.meta_instruction(cf.ToolSwitch(inner_thoughts=True, enabled=frozenset({"Calculator"})))


def _turn(human: str, moss: str, thoughts=None, commands=None, results=None) -> dict:
    return {
        "Human": f"<|Human|>: {human}<eoh>\n",
        "Inner Thoughts": thoughts and f"<|Inner Thoughts|>: {thoughts}<eot>\n",
        "Commands": commands and f"<|Commands|>: {commands}<eoc>\n",
        "Tool Responses": results and f"<|Results|>: {results}<eor>\n",
        "MOSS": f"<|MOSS|>: {moss}<eom>\n",
    }


def _sft_row(*turns: dict, cid=1, category="math") -> dict:
    chat = {f"turn_{i}": t for i, t in enumerate(turns, 1)}
    return {
        "conversation_id": cid,
        "meta_instruction": META,
        "num_turns": len(chat),
        "category": category,
        "chat": chat,
    }


CALC_CONV = _sft_row(
    _turn("Hi, who are you?", "<quality: 80> I am MOSS."),
    _turn(
        "What is 120+80?",
        "It is 200.",
        thoughts="The user asks for a sum; I should use the calculator.",
        commands='Calculate("120+80")',
        results='Calculate("120+80") => "200"',
    ),
)


def _write(path: Path, rows: list) -> Path:
    """Write a JSONL file; a row that is a string is written as is (for broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def _fails(loader, path: Path, *parts: str) -> str:
    with pytest.raises(DataError) as info:
        loader(path)
    message = str(info.value)
    assert path.name in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --- MOSS-003 SFT ----------------------------------------------------------------------------------


def test_sft_two_turn_calculator_conversation(tmp_path: Path) -> None:
    path = _write(tmp_path / "sft.jsonl", [CALC_CONV])
    [example] = load_moss_sft(path)
    assert isinstance(example, SFTExample)
    assert example.category == "math"
    assert example.conversation_id == "1"
    conv = example.conversation
    assert conv.meta_instruction == META
    assert conv.turns == (
        Turn("Hi, who are you?", "I am MOSS.", quality=80),
        Turn(
            "What is 120+80?",
            "It is 200.",
            inner_thoughts="The user asks for a sum; I should use the calculator.",
            commands='Calculate("120+80")',
            results='Calculate("120+80") => "200"',
        ),
    )


def test_sft_render_round_trip(tmp_path: Path) -> None:
    [example] = load_moss_sft(_write(tmp_path / "sft.jsonl", [CALC_CONV]))
    fields = [v for turn in CALC_CONV["chat"].values() for v in turn.values() if v is not None]
    assert cf.render(example.conversation) == META + "".join(fields)
    assert cf.parse(cf.render(example.conversation)) == example.conversation


def test_sft_json_list_and_single_object(tmp_path: Path) -> None:
    second = _sft_row(_turn("q", "a"), cid="abc", category="advice")
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([CALC_CONV, second]), "utf-8")
    assert [e.conversation_id for e in load_moss_sft(listed)] == ["1", "abc"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(second, indent=2), "utf-8")
    [example] = load_moss_sft(single)
    assert example.category == "advice"
    assert example.conversation.turns == (Turn("q", "a"),)


def test_sft_unused_fields_written_as_none_string(tmp_path: Path) -> None:
    turn = _turn("q", "a")
    turn["Inner Thoughts"] = "<|Inner Thoughts|>: None<eot>\n"  # as in the released files
    turn["Commands"] = "None"
    row = _sft_row(turn)
    row["num_turns"] = "1"
    path = _write(tmp_path / "sft.jsonl", ["", row, "   "])  # blank lines are skipped
    [example] = load_moss_sft(path)
    assert example.conversation.turns == (Turn("q", "a"),)


def _broken(mutate) -> dict:
    row = json.loads(json.dumps(CALC_CONV))
    mutate(row)
    return row


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"conversation_id": 1,', "invalid JSON"),
        (_broken(lambda r: r.pop("chat")), "missing field 'chat'"),
        (_broken(lambda r: r["chat"]["turn_2"].pop("MOSS")), "turn_2 missing key 'MOSS'"),
        (
            _broken(lambda r: r["chat"]["turn_2"].update(MOSS="<|MOSS|>: It is 200.\n")),
            "turn_2 field 'MOSS' without closing <eom>",
        ),
        (
            _broken(lambda r: r["chat"]["turn_1"].update(Human="<|MOSS|>: hi<eoh>\n")),
            "turn_1 field 'Human' must start with <|Human|>:",
        ),
        (
            _broken(lambda r: r["chat"]["turn_1"].update(MOSS="<|MOSS|>: a<eoh> b<eom>\n")),
            "turn_1 field 'MOSS' contains the special token <eoh>",
        ),
        (_broken(lambda r: r["chat"]["turn_1"].update(Human=None)), "turn_1 field 'Human' is null"),
        (
            _broken(lambda r: r["chat"]["turn_1"].update(MOSS="<|MOSS|>: <quality: 80> <eom>\n")),
            "turn_1 field 'MOSS' must be a non-empty string",
        ),
        (_broken(lambda r: r["chat"].pop("turn_1")), "missing 'turn_1'"),
        (_broken(lambda r: r.update(num_turns=3)), "field 'num_turns' is 3 but 'chat' has 2 turns"),
        (_broken(lambda r: r.update(category="")), "field 'category' must be a non-empty string"),
        ([CALC_CONV], "expected a JSON object, got list"),
    ],
)
def test_sft_bad_row(tmp_path: Path, row, problem: str) -> None:
    path = _write(tmp_path / "sft.jsonl", [CALC_CONV, "", row, CALC_CONV])
    _fails(load_moss_sft, path, "line 3", problem)


def test_sft_json_list_error_names_item(tmp_path: Path) -> None:
    path = tmp_path / "sft.json"
    path.write_text(json.dumps([CALC_CONV, _broken(lambda r: r.pop("category"))]), "utf-8")
    _fails(load_moss_sft, path, "item 2", "missing field 'category'")


def test_file_level_errors(tmp_path: Path) -> None:
    _fails(load_moss_sft, tmp_path / "absent.jsonl", "file not found")
    _fails(load_moss_sft, _write(tmp_path / "data.txt", [CALC_CONV]), "unknown file extension '.txt'")
    (tmp_path / "empty.jsonl").write_text("\n\n", "utf-8")
    _fails(load_moss_sft, tmp_path / "empty.jsonl", "empty file")
    (tmp_path / "empty.json").write_text("[]", "utf-8")
    _fails(load_preference_pairs, tmp_path / "empty.json", "empty file")
    (tmp_path / "bad.json").write_text('[\n  {"a": 1},\n  {"a": \n]', "utf-8")
    _fails(load_multi_response, tmp_path / "bad.json", "line 4", "invalid JSON")


# --- preference pairs ------------------------------------------------------------------------------


def test_preference_pairs(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Tell me a joke.", "chosen": "Why did the chicken...", "rejected": "No."},
        {
            "meta_instruction": "You are MOSS.\n",
            "history": [{"human": "Hi", "moss": "Hello!"}],
            "prompt": "And now?",
            "chosen": "Happy to help.",
            "rejected": "Go away.",
        },
    ]
    single, multi = load_preference_pairs(_write(tmp_path / "pairs.jsonl", rows))
    assert single == PreferencePair(
        Conversation(cf.meta_instruction(), (Turn("Tell me a joke.", ""),)), "Why did the chicken...", "No."
    )
    assert multi.context == Conversation("You are MOSS.\n", (Turn("Hi", "Hello!"), Turn("And now?", "")))
    assert multi.chosen == "Happy to help." and multi.rejected == "Go away."
    full = multi.context.with_last_reply(multi.chosen)
    assert cf.render(full).endswith("<|Human|>: And now?<eoh>\n<|MOSS|>: Happy to help.<eom>\n")


GOOD_PAIR = {"prompt": "p", "chosen": "c", "rejected": "r"}


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": "p", "rejected": "r"}, "missing field 'chosen'"),
        ({**GOOD_PAIR, "rejected": "bad<eom>"}, "field 'rejected' contains the special token <eom>"),
        ({**GOOD_PAIR, "chosen": "<|Human|>: x"}, "field 'chosen' contains the special token <|Human|>"),
        ({**GOOD_PAIR, "prompt": "  "}, "field 'prompt' must be a non-empty string"),
        ({**GOOD_PAIR, "chosen": 3}, "field 'chosen' must be a string, got number"),
        ({**GOOD_PAIR, "history": "Hi"}, "field 'history' must be a list"),
        ({**GOOD_PAIR, "history": [{"human": "Hi"}]}, "history entry 1 missing key 'moss'"),
        ({**GOOD_PAIR, "meta_instruction": None}, "field 'meta_instruction' must be a string, got null"),
    ],
)
def test_preference_bad_row(tmp_path: Path, row: dict, problem: str) -> None:
    path = _write(tmp_path / "pairs.jsonl", [GOOD_PAIR, row])
    _fails(load_preference_pairs, path, "line 2", problem)


# --- multi-response --------------------------------------------------------------------------------


def test_multi_response(tmp_path: Path) -> None:
    row = {
        "history": [{"human": "Hi", "moss": "Hello!"}],
        "prompt": "Rate me.",
        "responses": ["A", "B", "C"],
        "scores": [1, 0.5, -2],
    }
    [item] = load_multi_response(_write(tmp_path / "multi.jsonl", [row]))
    assert item == MultiResponse(
        Conversation(cf.meta_instruction(), (Turn("Hi", "Hello!"), Turn("Rate me.", ""))),
        ("A", "B", "C"),
        (1.0, 0.5, -2.0),
    )


GOOD_MULTI = {"prompt": "p", "responses": ["a", "b"], "scores": [0.1, 0.2]}


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({**GOOD_MULTI, "scores": [0.1]}, "length mismatch: 2 responses but 1 scores"),
        ({**GOOD_MULTI, "responses": ["a"], "scores": [1]}, "at least 2 responses, got 1"),
        ({**GOOD_MULTI, "scores": [0.1, "0.2"]}, "field 'scores' must be a list of numbers"),
        ({**GOOD_MULTI, "scores": [True, 0.2]}, "field 'scores' must be a list of numbers"),
        ({**GOOD_MULTI, "scores": "0.1"}, "field 'scores' must be a list of numbers"),
        ('{"prompt": "p", "responses": ["a", "b"], "scores": [NaN, 1]}', "'scores' entry 1 is not finite"),
        ({**GOOD_MULTI, "responses": ["a", ""]}, "field 'responses' entry 2 must be a non-empty string"),
        ({**GOOD_MULTI, "responses": "ab"}, "field 'responses' must be a list of strings"),
        ({"prompt": "p", "responses": ["a", "b"]}, "missing field 'scores'"),
    ],
)
def test_multi_response_bad_row(tmp_path: Path, row, problem: str) -> None:
    path = _write(tmp_path / "multi.jsonl", [GOOD_MULTI, GOOD_MULTI, row])
    _fails(load_multi_response, path, "line 3", problem)
