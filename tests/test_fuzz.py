"""Fuzzing the parsers that read hostile text: tool commands and switches (model output, meta-instructions),
the MOSS chat format (model output), the data-format readers (user files), the LLM judge's answers, and
the gold judge's readers and the calculator's trailing ``=?`` (model output).

Each parser works in one forward pass, so its work is linear by construction; these tests feed it
arbitrary and adversarial inputs up to its length cap (the shapes that made the old regexes backtrack:
repeated calls whose last one is cut off, runs of whitespace, unclosed fields) and check what it returns.
Hypothesis's ``deadline`` (10 s, generous for a busy machine: linear parsing of the longest input takes
well under a second) is the guard against a parser that is not linear: such inputs took from 10 s to
minutes each before. The test at the end runs the shapes that took hours in a subprocess, whose generous
timeout stops a hang (no time is asserted). Where an old regex is still the specification, short inputs
are compared with it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignment import chat_format as cf
from alignment.data.formats import load_preferences, load_prompts
from alignment.data.loaders import DataError
from alignment.judges.llm import MAX_ANSWER_CHARS, parse_answer
from alignment.tools import MAX_LINE_LENGTH, TOOLS, enabled_tools, parse_calls, scan_line, scan_switch

FUZZ = settings(max_examples=40, deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# The regexes the tool parser used to be: still the specification of what a well-formed line is.
_CALL = r"""([A-Za-z_]\w*)\s*\(\s*("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')\s*\)"""
OLD_LINE = re.compile(rf"\s*{_CALL}(?:\s*[,;]?\s*{_CALL})*\s*[,;]?\s*")
OLD_CALL = re.compile(_CALL)
OLD_SWITCH = re.compile(r"^\s*-?\s*([^:]+?)\s*:\s*(enabled|disabled)\b(?:.*?\bAPI:\s*([A-Za-z_]\w*)\s*\()?", re.I)

CALL_ALPHABET = st.sampled_from(list('aC_1(")\' ,;\\\t') + ["Calculate", '"1+1"', "\u00e9", "\u2003"])
SWITCH_ALPHABET = st.sampled_from(list("- :.(\t_x") + ["enabled", "Disabled", "API", "api:", "Calculate",
                                                        "Calculator", "\u00e9", "\u0130"])


def cut_off_calls(n: int, sep: str) -> str:
    """``n`` calls separated by ``sep`` and a last call cut off: what a repetitive model writes at its token limit."""
    return (f'Calculate("1+1"){sep}' * n + 'Calculate("1')[:MAX_LINE_LENGTH]


# --- tool commands ----------------------------------------------------------------------------------


@FUZZ
@given(st.lists(CALL_ALPHABET, max_size=14).map("".join))
def test_scan_line_agrees_with_the_old_grammar(line: str):
    old = OLD_LINE.fullmatch(line)
    new = scan_line(line)
    assert (new is not None) == (old is not None)
    if new is not None:
        assert new == [(m.group(1), m.group(2)) for m in OLD_CALL.finditer(line)]


@FUZZ
@given(st.integers(1, MAX_LINE_LENGTH // 17), st.sampled_from([" ", "  ", "\t", " ,", ";"]))
def test_cut_off_repetitions_at_the_length_cap_parse(n: int, sep: str):
    text = cut_off_calls(n, sep)
    assert parse_calls(text) == []  # the cut-off call makes the line malformed
    head = text[: text.rfind("Calculate")]
    assert parse_calls(head) == [("Calculate", "1+1")] * head.count("Calculate")


@settings(FUZZ, max_examples=15)
@given(st.lists(st.text(max_size=MAX_LINE_LENGTH), max_size=4).map("\n".join))
def test_parse_calls_on_any_text(text: str):
    for name, arg in parse_calls(text):
        assert name.isidentifier() and isinstance(arg, str)


@FUZZ
@given(st.integers(0, MAX_LINE_LENGTH - 1), st.sampled_from(["x", ":", "- x: enabled. API:", "a" * 40]))
def test_enabled_tools_on_long_lines(k: int, tail: str):
    assert enabled_tools(" " * k + tail) == frozenset()
    switch = "- Calculator: enabled. API:" + " " * k + "Calculate("
    assert enabled_tools(switch) == ({"Calculate"} if len(switch) <= MAX_LINE_LENGTH else frozenset())


@FUZZ
@given(st.lists(SWITCH_ALPHABET, max_size=12).map("".join))
def test_scan_switch_agrees_with_the_old_regex(line: str):
    old = OLD_SWITCH.match(line)
    new = scan_switch(line)
    if old is None or not old.group(1).strip():
        assert new is None or not new[0]
        return
    assert new is not None
    assert (new[0], new[1], new[2]) == (old.group(1).strip(), old.group(2).lower() == "enabled", old.group(3))


@settings(FUZZ, max_examples=15)
@given(st.text(max_size=3 * MAX_LINE_LENGTH))
def test_enabled_tools_on_any_text(text: str):
    assert enabled_tools(text) <= set(TOOLS)


# --- the chat format --------------------------------------------------------------------------------

TOKENS = list(cf.ROLE_TOKENS.values()) + list(cf.CLOSE_TOKENS.values())
CHAT_ALPHABET = st.sampled_from(TOKENS + [": ", ":", "\n", " ", "x", "<", "<quality: 50>", "<|Human|>: hi<eoh>\n"])
CHAT_CAP = 200_000  # characters: far longer than any conversation within the lab's token limits


@FUZZ
@given(st.lists(CHAT_ALPHABET, max_size=200).map("".join))
def test_parse_any_token_soup(text: str):
    try:
        conv = cf.parse(text)
    except cf.FormatError:
        return
    assert cf.parse(cf.render(conv)) == conv


@FUZZ
@given(st.sampled_from(TOKENS), st.integers(1, CHAT_CAP // 24))
def test_unclosed_fields_at_the_cap(token: str, n: int):
    text = ("<|Commands|>: " if token in cf.CLOSE_TOKENS.values() else token + ": ") + "x " * 3
    soup = (text * n)[:CHAT_CAP]
    try:
        cf.parse("<|Human|>: hi<eoh>\n" + soup)
    except cf.FormatError:
        pass
    turn = cf.reply_turn("hi", "<|Inner Thoughts|>: " + soup + "<|MOSS|>: done")
    assert turn.moss == "done"
    assert cf.reply_text(soup) == cf.reply_text(soup).strip()


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=30)), min_size=1, max_size=5))
def test_render_parse_round_trip(turns):
    clean = [(h, m) for h, m in turns if not any(t in h + m for t in TOKENS)]
    if not clean:
        return
    conv = cf.Conversation(cf.PLAIN_META, tuple(cf.Turn(h, m) for h, m in clean))
    text = cf.render(conv)
    if any(t in cf.PLAIN_META for t in TOKENS):
        return
    assert cf.parse(text) == conv


# --- the judge's answer -----------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.sampled_from(list("AB ab.*:\n") + ["A better", "Response ", "is "]), max_size=60).map("".join))
def test_parse_answer_on_any_text(text: str):
    verdict = parse_answer(text)
    assert verdict in (None, "A", "B")
    if verdict is not None:
        assert verdict in text


@FUZZ
@given(st.integers(0, MAX_ANSWER_CHARS), st.sampled_from(["A", "B", "a", " "]))
def test_parse_answer_at_the_cap(n: int, ch: str):
    text = ("A " * n)[:MAX_ANSWER_CHARS - 1] + ch
    assert parse_answer(text) in (None, "A", "B")
    assert parse_answer(text + " " * (MAX_ANSWER_CHARS + 1)) is None  # past the cap: not read


# --- data files -------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.lists(st.sampled_from(
        list("ab \n\r:") + ["\n\nHuman:", "\n\nAssistant:", "Human:", "<eom>", "user", "assistant"]),
        max_size=12).map("".join),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["prompt", "chosen", "rejected", "role", "content", "messages", "history", "chat"]),
        inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.lists(JSON_VALUES, min_size=1, max_size=4))
def test_preference_and_prompt_readers_accept_or_name_the_record(tmp_path_factory, records):
    path = Path(tmp_path_factory.mktemp("fuzz")) / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    for load in (load_preferences, load_prompts):
        try:
            out = load(path)
        except DataError as err:
            assert str(path) in str(err) and re.search(r": line \d+", str(err)), str(err)
        else:
            assert 0 < len(out) <= len(records)


RECORD_CAP = 400_000  # characters of one field: longer than any conversation within the lab's token limits


@FUZZ
@given(st.integers(1, RECORD_CAP), st.sampled_from([" ", "\n", "\t"]))
def test_implicit_prompt_of_long_blank_replies(tmp_path_factory, n: int, ws: str):
    path = Path(tmp_path_factory.mktemp("fuzz")) / "blank.jsonl"
    rows = [{"chosen": "Q " + ws * n + "a", "rejected": "Q " + ws * n + "b"},
            {"chosen": "x" + ws * n, "rejected": "x" + ws * n}]  # no word boundary leaves both replies non-blank
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    try:
        load_preferences(path)
    except DataError as err:
        assert ": line 2: the implicit prompt" in str(err)
    else:
        raise AssertionError("a pair without an implicit prompt was read")


# --- the gold judge's readers (model output) ---------------------------------------------------------

OLD_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]")
OLD_FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL)
REPLY_ALPHABET = st.sampled_from(list("a .!?。\n`") + ["```", "```python\n", "python", "```\n"])


@FUZZ
@given(st.lists(REPLY_ALPHABET, max_size=30).map("".join))
def test_gold_judge_readers_agree_with_the_old_regexes(text: str):
    from alignment.world.categories.code import fenced_code
    from alignment.world.judge import sentences_of

    assert sentences_of(text) == OLD_SENTENCE.findall(text)
    m = OLD_FENCE.search(text)
    assert fenced_code(text) == (m.group(1) if m else None)


@FUZZ
@given(st.integers(1, RECORD_CAP), st.sampled_from(["a", "```\n", "```python"]))
def test_gold_judge_readers_on_long_replies(n: int, unit: str):
    from alignment.world.categories.code import fenced_code
    from alignment.world.judge import sentences_of

    text = (unit * n)[:RECORD_CAP]
    assert sentences_of(text) == []
    assert fenced_code(text) in (None, "") or "```" not in fenced_code(text)


OLD_ITEM = re.compile(r"^\s*(\d+)\.\s*(.+?)\s*$", re.MULTILINE)  # brainstorming's old item regex
OLD_ASK = re.compile(r"\s*=\s*\??\s*$")  # the calculator's old "=?" regex
ITEM_ALPHABET = st.sampled_from(list(" \n\t\r12.a\u3000\u0663\x85\u2028") + ["1. ", "\n2.", "  \n", "1.\n\n"])


@FUZZ
@given(st.lists(ITEM_ALPHABET, max_size=30).map("".join))
def test_numbered_items_agree_with_the_old_regex(text: str):
    from alignment.world.categories.brainstorming import numbered_items

    assert numbered_items(text) == [m.group(2) for m in OLD_ITEM.finditer(text)]


@FUZZ
@given(st.lists(st.sampled_from(list(" \n\t=?a1\u3000")), max_size=14).map("".join))
def test_drop_ask_agrees_with_the_old_regex(text: str):
    from alignment.tools.calculator import drop_ask

    assert drop_ask(text) == OLD_ASK.sub("", text)


@FUZZ
@given(st.integers(1, RECORD_CAP), st.sampled_from(["\n", " \n", "1.\n", "1. a ", "\n1. a"]))
def test_numbered_items_on_long_replies(n: int, unit: str):
    from alignment.world.categories.brainstorming import numbered_items

    text = (unit * n)[:RECORD_CAP]
    items = numbered_items(text)
    assert all(item == item.strip() and "\n" not in item for item in items)
    assert len(items) <= text.count(".")


# The shapes that made the old regexes backtrack, at the length cap. The old ones took hours on these;
# a hang, not a slow run, is what the subprocess's generous timeout guards against (no time is asserted).
HANG_GUARD_S = 300
_LONG_READERS = """
import json, sys
from alignment.tools.calculator import drop_ask
from alignment.world.categories.brainstorming import numbered_items
n = int(sys.argv[1])
out = {
    "blank_lines": numbered_items("\\n" * n),
    "blank_runs": numbered_items(" \\n" * n + "1. x"),
    "long_item": numbered_items("1. a" + " " * n + "b"),
    "dot_then_blank": numbered_items("1." + "\\n" * n),
    "many_items": len(numbered_items("1.\\n" * n)),
    "ask": drop_ask(" " * n + "x" + "=" + " " * n + "?" + "\\t" * n),
}
print(json.dumps(out))
"""


def test_readers_of_model_output_finish_on_adversarial_whitespace_at_the_cap():
    n = RECORD_CAP // 2
    try:
        done = subprocess.run([sys.executable, "-c", _LONG_READERS, str(n)], capture_output=True, text=True,
                              timeout=HANG_GUARD_S, cwd=Path(__file__).resolve().parents[1], check=True)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"a reader of model output did not finish in {HANG_GUARD_S} s: it backtracks") from err
    out = json.loads(done.stdout)
    assert out["blank_lines"] == []
    assert out["blank_runs"] == ["x"]
    assert out["long_item"] == ["a" + " " * n + "b"]
    assert out["dot_then_blank"] == []
    assert out["many_items"] == n // 2  # a "1." reads the next line's "1." as its item, and that line is used up
    assert out["ask"] == " " * n + "x"
