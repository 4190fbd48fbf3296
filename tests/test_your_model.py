"""End to end on what a researcher brings: a local Qwen2 checkpoint (not the lab's Llama), a
MOSS-003 SFT file, an HH-RLHF preference file and a prompts file; the preference model learns from
a reward model's AI feedback on the SFT model's own samples; PAT and PPO are judged on the user's
prompts by the preference model, the reward model and an LLM behind a real OpenAI-compatible HTTP
server on loopback. A second run asks the LLM nothing new, and the API key reaches no file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from alignment.judges.llm import QUESTION
from tests.builders import save_qwen2, save_reward_model, write_hh, write_moss_sft, write_prompts
from tests.lab import ROOT, run_lab
from tests.openai_server import serve

KEY_ENV = "LAB_TEST_JUDGE_KEY"
SECRET = "sk-lab-test-0123456789abcdef"
PAIRS = ("pat_vs_sft", "ppo_vs_sft", "pat_vs_ppo")


@pytest.fixture(scope="module")
def inputs(world, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    return {"root": root,
            "model": save_qwen2(root / "qwen2", tokenizer),
            "rm": save_reward_model(root / "rm", tokenizer),
            "sft": write_moss_sft(root / "moss-003-sft.jsonl", world, 160),
            "hh": write_hh(root / "hh-rlhf-val.jsonl", world, 8),
            "train_prompts": write_prompts(root / "train-prompts.jsonl", world, 12, split="train"),
            "test_prompts": write_prompts(root / "test-prompts.jsonl", world, 10, split="test")}


def overrides(inputs: dict, base_url: str) -> list[str]:
    return [
        "+experiment=compare", "model=pretrained", f"model.path={inputs['model']}",
        "data=moss_sft", f"data.path={inputs['sft']}", "data.max_length=256", "trainer.batch_size=8",
        "pm.feedback=judge", "pm.judge=rm", f"pm.prompts_path={inputs['train_prompts']}", "pm.n_prompts=12",
        "pm.candidates=3", f"pm.val_path={inputs['hh']}", "pm.max_length=256",
        "pat.n_train=96", "pat.trainer.batch_size=8", "pat.control_prompts=4",
        "algo.iterations=2", "algo.rollout_batch_size=4", "algo.max_new_tokens=16", "algo.ptx_batch_size=4",
        "algo.checkpoint_every=0", f"algo.prompts_path={inputs['train_prompts']}",
        f"eval.prompts_path={inputs['test_prompts']}", "eval.n_prompts=10", "eval.max_new_tokens=24",
        "eval.judges=[pm,rm,llm]", f"judges.rm.path={inputs['rm']}", f"judges.llm.base_url={base_url}",
        "judges.llm.model=local-judge", f"judges.llm.api_key_env={KEY_ENV}", "judges.llm.max_tokens=4",
    ]


def test_your_model_your_data_your_judges(ray_address, inputs, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    root = inputs["root"]
    with serve(model_dir=inputs["model"], api_key=SECRET) as server:
        args = overrides(inputs, server.base_url)
        out = run_lab(ray_address, root / "run1", root / "cache", *args)
        asked = server.requests
        assert asked > 0 and all(a == f"Bearer {SECRET}" for a in server.seen_auth)
        again = run_lab(ray_address, root / "run2", root / "cache", *args)
        # only the preflight's one judging request (never cached): every verdict comes from the cache
        assert server.requests == asked + 1, "a rerun must take every verdict from the cache"
    assert "PM: rm judge labelled" in out.stdout
    for stage in ("SFT: reusing cached checkpoint", "PM: reusing cached preference model", "PAT: reusing cached",
                  "PPO: reusing cached"):
        assert stage in again.stdout

    results = json.loads((root / "run1" / "results.json").read_text())
    assert set(results["win_rate"]) == {"pm", "rm", "llm"}  # no gold judge on the user's prompts
    assert set(results["judge_shares"]) == {"pm", "rm", "llm"}
    assert all(0 <= v <= 1 for shares in results["judge_shares"].values() for v in shares.values())
    for judge in ("pm", "rm", "llm"):
        for pair in PAIRS:
            w = results["win_rate"][judge][pair]
            assert w["n"] == 10 and 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1
            assert 0 <= w["lc"]["value"] <= 1 and w["lc"]["ci"][0] <= w["lc"]["ci"][1]
    # a pretrained model is also judged untrained (base): did training help at all?
    assert set(results["length"]) == {"sft", "pat", "ppo", "base"} and all(v > 0 for v in results["length"].values())
    assert "sft_vs_base" in results["win_rate"]["pm"]
    assert "gold" not in results and results["controllability"]["judge"] == "rm"
    assert results["pm"]["val_accuracy"] is not None  # validated on the HH-RLHF file
    assert json.loads((root / "run2" / "results.json").read_text())["win_rate"] == results["win_rate"]
    scores = json.loads((root / "run1" / "scores.json").read_text())
    assert set(scores["pairwise"]["llm"]) == {*PAIRS, "pat_vs_base", "ppo_vs_base", "sft_vs_base"}
    assert len(scores["rm"]["ppo"]) == 10

    report = (root / "run1" / "report.md").read_text()
    assert "| PAT vs SFT | reward model |" in report and "| PAT vs PPO | LLM judge |" in report
    assert "length-controlled" in report and "On the reward model" in report

    for run in ("run1", "run2"):
        for path in (root / run).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert SECRET not in out.stdout + out.stderr + again.stdout + again.stderr
    assert list((root / "run1" / "wandb").glob("offline-run-*"))  # W&B wrote its files, without the key


def test_llm_feedback_labels_the_sft_models_samples(ray_address, inputs, monkeypatch):
    """``pm.feedback=judge pm.judge=llm``: every pair of the SFT model's candidates is asked in both
    orders (a judge that prefers the longer reply decides them), and the labelled pairs are an
    artifact that a second preference model reuses."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    root = inputs["root"]

    def longer(messages: list[dict]) -> str:
        text = messages[-1]["content"].removesuffix(QUESTION)
        a = text.split("Response A:", 1)[1].split("Response B:", 1)[0]
        b = text.split("Response B:", 1)[1]
        return "A" if len(a) > len(b) else "B"

    with serve(responder=longer) as server:
        args = [a for a in overrides(inputs, server.base_url) if not a.startswith(("+experiment", "judges.llm.api"))]
        args = ["+experiment=pm", "pm.judge=llm", "pm.n_prompts=6", *[a for a in args if a != "pm.judge=rm"]]
        out = run_lab(ray_address, root / "pm1", root / "cache", *args)
        assert server.requests > 0 and "PM: llm judge labelled" in out.stdout
        asked = server.requests
        again = run_lab(ray_address, root / "pm2", root / "cache", *args, "pm.trainer.lr=2e-3")
        assert server.requests == asked + 1  # the preflight's request; another preference model, the same pairs
        assert "PM: reusing cached judge feedback" in again.stdout
    results = json.loads((root / "pm1" / "results.json").read_text())
    assert results["pm"]["train_pairs"] > 0 and 0 <= results["pm"]["val_accuracy"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("change, problem", [
    ("judges.llm.base_url=http://127.0.0.1:{port}/v1", "judges.llm: cannot reach"),
    ("judges.rm.path={root}/nowhere", "judges.rm.path:"),
    ("eval.prompts_path={root}/hh-rlhf-val.jsonl", "eval.prompts_path:"),
    ("pm.val_path={root}/test-prompts.jsonl", "pm.val_path:"),
    ("eval.judges=[gold,pm]", "eval.judges: the gold judge knows only the world's prompts"),
    ("judges.llm.api_key_env=sk-pasted-key-0123", "judges.llm.api_key_env must be the NAME"),
    ("eval.do_sample=false", "every candidate would be the same reply"),
    ("algo.prompts_path={root}/hh-rlhf-val.jsonl", "algo.prompts_path:"),
    ("pm.prompts_path={root}/hh-rlhf-val.jsonl", "pm.prompts_path:"),
    ("model.path={root}/nowhere", "model.path:"),
])
def test_bad_inputs_fail_before_ray_starts(inputs, change, problem, tmp_path):
    """An unreachable judge, a missing model and files of the wrong kind fail in seconds, naming the
    key, before Ray starts or anything trains."""
    args = [a for a in overrides(inputs, f"http://127.0.0.1:{_free_port()}/v1")
            if not a.startswith(change.split("=")[0] + "=")]
    args.append(change.format(port=_free_port(), root=inputs["root"]))
    started = time.time()
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), **{KEY_ENV: SECRET})
    out = subprocess.run([sys.executable, "run.py", *args, f"hydra.run.dir={tmp_path}", f"cache_dir={tmp_path}/c"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0 and problem in out.stderr, out.stderr[-2000:]
    assert "Ray dashboard" not in out.stdout and time.time() - started < 30
    assert SECRET not in out.stdout + out.stderr and "sk-pasted-key-0123" not in out.stderr
