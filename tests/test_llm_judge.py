"""The LLM judge over real HTTP (loopback only): both orders, ties, cache, retries, errors, the key, concurrency."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
import traceback
from pathlib import Path

import pytest

from alignment.chat_format import PLAIN_META, Conversation, Turn
from alignment.judges.llm import JudgeError, LLMJudge, LLMJudgeSpec, PairItem, parse_answer
from tests.openai_server import RawReply, completion, serve

RESPONSES_RE = re.compile(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nWhich response", re.DOTALL)
SECRET = "sk-test-9f8e7d6c5b4a-SECRET"


def responses(messages: list[dict]) -> tuple[str, str]:
    """The two replies shown to the judge, in the order shown (A, B)."""
    m = RESPONSES_RE.search(messages[-1]["content"])
    assert m is not None, messages[-1]["content"]
    return m.group(1), m.group(2)


def question(messages: list[dict]) -> int:
    """Which of ``items()`` is being judged."""
    return int(re.search(r"User: question (\d+)\?", messages[-1]["content"]).group(1))


def prefer_longer(messages: list[dict]) -> str:
    a, b = responses(messages)
    return "A" if len(a) > len(b) else "B"


def always_first(messages: list[dict]) -> str:
    return "A"


def items(n: int = 4) -> list[PairItem]:
    """Pair i: reply A is longer for even i, reply B for odd i."""
    out = []
    for i in range(n):
        context = Conversation(PLAIN_META, (Turn("hi there", "hello, how can I help?"), Turn(f"question {i}?", "")))
        short, long = f"short {i}", f"a much longer and more detailed answer {i}"
        out.append(PairItem(context, long, short) if i % 2 == 0 else PairItem(context, short, long))
    return out


def spec(server, **kw) -> LLMJudgeSpec:
    kw.setdefault("timeout", 10.0)
    return LLMJudgeSpec(base_url=server.base_url, model=server.model_name, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_answer():
    assert parse_answer("A") == "A"
    assert parse_answer(" **B** is better") == "B"
    assert parse_answer("Answer: A.") == "A"
    assert parse_answer("[[B]]") == "B"
    for bad in ("", None, "ABBA", "a", "Both are fine", "I cannot decide"):
        assert parse_answer(bad) is None


def test_both_orders_and_transcript():
    seen: list[list[dict]] = []
    lock = threading.Lock()

    def record(messages):
        with lock:
            seen.append(messages)
        return prefer_longer(messages)

    pairs = items(4)
    with serve(responder=record) as server, LLMJudge(spec(server)) as judge:
        judge.check()
        assert server.requests == 1  # the preflight's one judging request
        seen.clear()
        verdicts = judge.compare(pairs)
        assert server.requests == 1 + 8
    assert verdicts == [1, -1, 1, -1]
    assert judge.stats == {"requests": 8, "cache_hits": 0, "invalid": 0, "disagreements": 0, "items": 4,
                           "unparsed": 0, "errors": 0, "garbage": 0}
    assert judge.shares() == {"tie_share": 0.0, "unparsed_share": 0.0, "error_share": 0.0}
    shown = {responses(m) for m in seen}
    for p in pairs:  # each pair was shown in both orders
        assert (p.a, p.b) in shown and (p.b, p.a) in shown
    system, user = seen[0]
    assert system["role"] == "system" and "impartial judge" in system["content"]
    assert user["role"] == "user"
    assert "User: hi there\nAssistant: hello, how can I help?\nUser: question" in user["content"]
    assert "MOSS" not in user["content"]  # the policy's meta-instruction is left out
    assert "single letter, A or B" in user["content"]


def test_position_bias_cancels_and_disagreement_is_a_tie():
    with serve(responder=always_first) as server, LLMJudge(spec(server)) as judge:
        assert judge.compare(items(4)) == [0, 0, 0, 0]
    assert judge.stats["disagreements"] == 4 and judge.stats["invalid"] == 0

    def odd_items_always_b(messages):  # agrees with itself on even items, prefers position B on odd ones
        return prefer_longer(messages) if question(messages) % 2 == 0 else "B"

    with serve(responder=odd_items_always_b) as server, LLMJudge(spec(server)) as judge:
        verdicts = judge.compare(items(4))
    assert verdicts == [1, 0, 1, 0]
    assert judge.stats["disagreements"] == 2


def test_unparseable_answer_is_a_tie_and_invalid():
    def sometimes_garbage(messages):
        i = question(messages)
        if i == 0:  # both orders invalid
            return "Both answers have merit."
        if i == 1 and responses(messages)[0].startswith("a much"):  # the (B, A) order only
            return "I cannot decide"
        return prefer_longer(messages)

    with serve(responder=sometimes_garbage) as server, LLMJudge(spec(server)) as judge:
        verdicts = judge.compare(items(3))
    assert verdicts == [0, 0, 1]
    assert judge.stats["invalid"] == 3
    assert judge.stats["disagreements"] == 0


def test_cache_asks_nothing_twice(tmp_path: Path):
    cache = tmp_path / "deep" / "dir" / "judge.sqlite"
    pairs = items(4)
    with serve(responder=prefer_longer) as server:
        with LLMJudge(spec(server), cache_path=cache) as judge:
            first = judge.compare(pairs)
            assert judge.compare(pairs) == first  # the same judge remembers too
        assert server.requests == 8
        with LLMJudge(spec(server), cache_path=cache) as again:
            assert again.compare(pairs) == first
        assert server.requests == 8
        assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 8
    assert cache.exists()
    rows = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert rows == 8

    def broken(messages):
        raise AssertionError("a cached request was sent")

    # The server's URL is not part of the key: the same model elsewhere gives the cached verdicts.
    with serve(responder=broken) as other, LLMJudge(spec(other), cache_path=cache) as moved:
        assert moved.compare(pairs) == first
        assert other.requests == 0


def test_answers_are_cached_as_they_arrive(tmp_path: Path):
    cache = tmp_path / "judge.sqlite"
    pairs = items(3)
    pairs.append(PairItem(pairs[0].context, "poison", "poison pill"))

    def poisoned(messages):
        if "poison" in messages[-1]["content"]:
            raise RuntimeError("boom")
        return prefer_longer(messages)

    with serve(responder=poisoned) as server, LLMJudge(spec(server, max_retries=0, concurrency=1),
                                                        cache_path=cache) as judge:
        with pytest.raises(JudgeError, match=r"item 3"):
            judge.compare(pairs)
    with serve(responder=prefer_longer) as server, LLMJudge(spec(server), cache_path=cache) as judge:
        assert judge.compare(pairs) == [1, -1, 1, -1]
        assert server.requests == 2  # only the poisoned pair's two orders were asked again
        assert judge.stats["cache_hits"] == 6


def test_retries_with_backoff():
    with serve(responder=prefer_longer, fail_first=2) as server, LLMJudge(spec(server, max_retries=2,
                                                                                concurrency=1)) as judge:
        assert judge.compare(items(2)) == [1, -1]
        assert server.requests == 4 + 2
    with serve(responder=prefer_longer, fail_first=1) as server, LLMJudge(spec(server, max_retries=0)) as judge:
        with pytest.raises(JudgeError) as info:
            judge.compare(items(1))
        assert server.base_url in str(info.value)
        assert "HTTP 500" in str(info.value) and "item 0" in str(info.value)


def test_unreachable_server_fails_check_fast():
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = LLMJudge(LLMJudgeSpec(base_url=url, model="local-judge", max_retries=4))
    start = time.monotonic()
    with pytest.raises(JudgeError, match=re.escape(f"cannot reach the LLM judge at {url}")):
        judge.check()
    assert time.monotonic() - start < 5
    judge.close()


def test_wrong_model_fails_check_listing_served_models():
    with serve(responder=prefer_longer, model_name="served-one") as server:
        judge = LLMJudge(LLMJudgeSpec(base_url=server.base_url, model="no-such-model"))
        with pytest.raises(JudgeError, match=r"no-such-model.*served-one"):
            judge.check()
        judge.close()


def test_api_key_from_env_never_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    cache = tmp_path / "judge.sqlite"
    with serve(responder=prefer_longer, api_key=SECRET) as server:
        judge_spec = spec(server, api_key_env="JUDGE_TEST_KEY")
        judge = LLMJudge(judge_spec, cache_path=cache)
        judge.check()
        assert judge.compare(items(2)) == [1, -1]
        assert server.seen_auth == {f"Bearer {SECRET}"}
        for text in (repr(judge_spec), repr(judge), str(judge_spec), str(judge)):
            assert SECRET not in text
        blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # db, -wal, -shm while open
        judge.close()
        blobs += b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert SECRET.encode() not in blobs

        # A wrong key: the server echoes the key it was sent; the judge's errors must not.
        monkeypatch.setenv("JUDGE_TEST_KEY", SECRET + "-wrong")
        wrong = LLMJudge(spec(server, api_key_env="JUDGE_TEST_KEY", max_retries=0))
        errors = []
        for call in (wrong.check, lambda: wrong.compare(items(1))):
            with pytest.raises(JudgeError) as info:
                call()
            errors.append(info.value)
        wrong.close()
    assert "HTTP 401" in str(errors[0]) and server.base_url in str(errors[1])
    for err in errors:
        text = str(err) + repr(err) + "".join(traceback.format_exception(type(err), err, err.__traceback__))
        assert SECRET not in text

    monkeypatch.delenv("JUDGE_MISSING_KEY", raising=False)
    with pytest.raises(JudgeError, match="JUDGE_MISSING_KEY"):
        LLMJudge(LLMJudgeSpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="JUDGE_MISSING_KEY"))
    monkeypatch.setenv("JUDGE_MISSING_KEY", "")
    with pytest.raises(JudgeError, match="JUDGE_MISSING_KEY"):
        LLMJudge(LLMJudgeSpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="JUDGE_MISSING_KEY"))


def test_concurrency_is_bounded():
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(messages):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.03)
        with lock:
            state["now"] -= 1
        return prefer_longer(messages)

    with serve(responder=slow) as server, LLMJudge(spec(server, concurrency=3)) as judge:
        verdicts = judge.compare(items(12))
        assert server.requests == 24
    assert verdicts == [1, -1] * 6  # results come back in input order
    assert 2 <= state["max"] <= 3


def test_tiny_local_model_end_to_end(tmp_path: Path, tokenizer):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "tiny-judge"
    tokenizer.save_pretrained(model_dir)  # a copy: the session fixture keeps no chat template
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tok.chat_template = (
        "{% for m in messages %}<|Human|>: {{ m['content'] }}<eoh>\n{% endfor %}"
        "{% if add_generation_prompt %}<|MOSS|>:{% endif %}"
    )
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)

    cache = tmp_path / "judge.sqlite"
    pairs = items(3)
    with serve(model_dir=model_dir) as server, LLMJudge(spec(server, max_tokens=4), cache_path=cache) as judge:
        judge.check()
        verdicts = judge.compare(pairs)
        assert server.requests == 1 + 6  # the preflight's judging request, then both orders of 3 pairs
    assert len(verdicts) == 3 and set(verdicts) <= {-1, 0, 1}
    answers = [a for (a,) in sqlite3.connect(cache).execute("SELECT answer FROM answers")]
    assert len(answers) == 6
    decided = sum(parse_answer(a) is not None for a in answers)
    assert judge.stats["invalid"] + decided == 6
    assert judge.stats["requests"] == 6


# --- garbage, the error budget, the preflight's judging request -----------------------------------------

GARBAGE = {
    "no choices": RawReply(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "local-judge",
                                       "choices": []}).encode()),
    "null content": completion(None),
    "empty content cut at max_tokens": completion("", finish_reason="length"),
    "non-string content": completion([{"type": "text", "text": "A"}]),
    "error body with 200": RawReply(json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode()),
    "html page": RawReply(b"<html><body>Bad gateway</body></html>", content_type="text/html"),
    "html labelled json": RawReply(b"<html><body>Bad gateway</body></html>"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_is_retried_counted_and_never_cached(tmp_path: Path, kind: str):
    cache = tmp_path / "judge.sqlite"
    pairs = items(60)
    bad = {"question 7?"}  # one item of 60 (1.7%, within the default 2% budget) gets garbage in both orders

    def sometimes_garbage(messages):
        if any(q in messages[-1]["content"] for q in bad):
            return GARBAGE[kind]
        return prefer_longer(messages)

    with serve(responder=sometimes_garbage) as server, LLMJudge(spec(server, max_retries=2),
                                                                cache_path=cache) as judge:
        verdicts = judge.compare(pairs)
        assert server.requests == 2 * 59 + 2 * 3  # the bad item's two requests: 3 attempts each
    assert verdicts[7] == 0 and verdicts[:7] == [1, -1] * 3 + [1]
    assert judge.stats["errors"] == 1 and judge.stats["garbage"] == 6 and judge.stats["invalid"] == 0
    assert judge.shares()["error_share"] == pytest.approx(1 / 60)
    answers = [a for (a,) in sqlite3.connect(cache).execute("SELECT answer FROM answers")]
    assert len(answers) == 2 * 59 and all(a in ("A", "B") for a in answers)

    # A rerun asks the garbage item again (nothing of it was cached) and now gets a real verdict.
    bad.clear()
    with serve(responder=sometimes_garbage) as server, LLMJudge(spec(server), cache_path=cache) as judge:
        assert judge.compare(pairs) == [1, -1] * 30
        assert server.requests == 2
        assert judge.stats["cache_hits"] == 2 * 59 and judge.stats["errors"] == 0


def test_errors_beyond_the_budget_fail_naming_the_count():
    pairs = items(20)

    def too_long(messages):  # a 400 for 2 items of 20 (10% > 2%): a context too long, say
        if "question 3?" in messages[-1]["content"] or "question 11?" in messages[-1]["content"]:
            return RawReply(json.dumps({"error": {"message": "context too long", "type": "invalid_request_error"}})
                            .encode(), status=400)
        return prefer_longer(messages)

    with serve(responder=too_long) as server, LLMJudge(spec(server, max_retries=0)) as judge:
        with pytest.raises(JudgeError, match=r"2 of 20 items \(10\.0%\) failed.*item 3.*HTTP 400.*"
                                             r"max_error_share=0\.02"):
            judge.compare(pairs)
    # A larger budget lets the same comparison finish: the failed items are ties, counted as errors.
    with serve(responder=too_long) as server, LLMJudge(spec(server, max_retries=0, max_error_share=0.2)) as judge:
        verdicts = judge.compare(pairs)
    assert verdicts[3] == verdicts[11] == 0 and verdicts[4] == 1
    assert judge.stats["errors"] == 2 and judge.shares()["error_share"] == pytest.approx(0.1)


def test_shares_split_ties_unparsed_and_errors():
    def mixed(messages):
        q = question(messages)
        if q == 0:
            return "Both are fine."  # unparsed
        if q == 1:
            return "A"  # always A: the two orders disagree, a tie
        return prefer_longer(messages)

    with serve(responder=mixed) as server, LLMJudge(spec(server)) as judge:
        assert judge.compare(items(4)) == [0, 0, 1, -1]
    assert judge.shares() == {"tie_share": 0.25, "unparsed_share": 0.25, "error_share": 0.0}


@pytest.mark.parametrize("param", ["temperature", "max_tokens"])
def test_check_sends_one_real_judging_request(param: str):
    with serve(responder=prefer_longer, reject=(param,)) as server, LLMJudge(spec(server)) as judge:
        with pytest.raises(JudgeError, match=rf"refused a judging request.*HTTP 400.*{param}"):
            judge.check()
        assert server.requests == 1
    with serve(responder=lambda m: completion(None)) as server, LLMJudge(spec(server)) as judge:
        with pytest.raises(JudgeError, match="null message content"):
            judge.check()
    with serve(responder=prefer_longer) as server, LLMJudge(spec(server)) as judge:
        judge.check()
        [body] = server.bodies
        assert body["max_tokens"] == 16 and body["temperature"] == 0.0
        assert "Response A:" in body["messages"][-1]["content"]


@pytest.mark.parametrize(("answer", "verdict"), [
    ("A", "A"), ("B", "B"), ("**B**", "B"), ("Response B.", "B"), ("A is better.", "A"),
    ("A better response is B.", "B"), ("A tie: neither.", None), ("B is better than A", "B"),
    ("The answer: A", "A"), ("ABBA", None), ("", None), (None, None), ("A" + " " * 5000, None),
])
def test_parse_answer_reads_the_named_letter(answer, verdict):
    assert parse_answer(answer) == verdict


def test_a_key_in_place_of_the_variable_name_is_not_echoed():
    key_like = "sk_live_4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"  # a valid variable name, but a key
    with pytest.raises(JudgeError) as info:
        LLMJudge(LLMJudgeSpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=key_like))
    assert key_like not in str(info.value) and "api_key_env" in str(info.value)
    assert key_like not in repr(LLMJudgeSpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=key_like))


def test_results_and_report_give_each_judges_tie_unparsed_and_error_shares():
    from experiments.evaluation.head_to_head import Judged, method_results
    from experiments.reports.report import win_table

    def win(tie: float, n: int) -> dict:
        return {"value": 0.5, "ci": [0.4, 0.6], "win": (1 - tie) / 2, "tie": tie, "lose": (1 - tie) / 2, "n": n}

    wins = {"pm": {"ppo_vs_sft": win(0.1, 10), "pat_vs_sft": win(0.3, 30)},
            "llm": {"ppo_vs_sft": win(0.5, 10)}}
    judged = Judged(replies={}, scores={}, lengths={"ppo": [3], "sft": [4], "pat": [5]},
                    judge_shares={"llm": {"tie_share": 0.2, "unparsed_share": 0.2, "error_share": 0.1}})
    results = method_results(None, judged, wins, ("ppo", "sft", "pat"))
    assert results["judge_shares"] == {
        "pm": {"tie_share": pytest.approx(0.25), "unparsed_share": 0.0, "error_share": 0.0},
        "llm": {"tie_share": 0.2, "unparsed_share": 0.2, "error_share": 0.1},
    }
    table = "\n".join(win_table(results))
    assert "| LLM judge | 0.200 | 0.200 | 0.100 |" in table and "| preference model | 0.250 | 0.000 | 0.000 |" in table


def test_verdicts_are_keyed_by_the_servers_fingerprint(tmp_path: Path):
    """Two servers serving different weights under one model name share no verdicts; the same weights
    elsewhere do; ``fingerprint`` overrides what the server says."""
    cache = tmp_path / "judge.sqlite"
    pairs = items(2)
    with serve(responder=prefer_longer, model_extra={"root": "/weights/a"}) as a, \
            LLMJudge(spec(a), cache_path=cache) as judge:
        first = judge.compare(pairs)
    with serve(responder=prefer_longer, model_extra={"root": "/weights/a"}) as same, \
            LLMJudge(spec(same), cache_path=cache) as judge:
        assert judge.compare(pairs) == first and same.requests == 0  # a listing's time-stamp is not who answers
    with serve(responder=always_first, model_extra={"root": "/weights/b"}) as b, \
            LLMJudge(spec(b), cache_path=cache) as judge:
        judge.compare(pairs)
        assert b.requests == 4 and judge.stats["cache_hits"] == 0
    with serve(responder=always_first, model_extra={"root": "/weights/c"}) as c:
        with LLMJudge(spec(c, fingerprint="judge-v1"), cache_path=cache) as judge:
            judge.compare(pairs)
        with LLMJudge(spec(c, fingerprint="judge-v1"), cache_path=cache) as judge:
            judge.compare(pairs)
        assert c.requests == 4  # the explicit fingerprint keyed the second run's hits
