"""End-to-end SFT through run.py in a subprocess, joined to the session's Ray instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab import run_lab


def test_sft_raises_gold_score_and_is_cached(ray_address, tmp_path):
    small = ["data.n_train=3200", "trainer.batch_size=8", "trainer.lr=4e-3", "eval.n_prompts=48",
             "trainer.log_every=20"]
    first = run_lab(ray_address, tmp_path / "run1", tmp_path / "cache", *small)
    run1 = tmp_path / "run1"
    results = json.loads((run1 / "results.json").read_text())["sft"]
    assert not results["cached"]
    assert results["gold"] > results["gold_init"] + 0.05
    assert min(results["sources"]) <= results["gold"] <= max(results["sources"])
    assert "Ray dashboard:" in first.stdout
    rows = [json.loads(line) for line in (run1 / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(losses) == 20 and losses[-1] < losses[0] / 2
    assert "stage: sft" in (run1 / "resolved_config.yaml").read_text()

    ckpt = Path(results["checkpoint"])
    assert ckpt.parent.parent == tmp_path / "cache"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(ckpt, local_files_only=True)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<eom>")

    second = run_lab(ray_address, tmp_path / "run2", tmp_path / "cache", *small)
    again = json.loads((tmp_path / "run2" / "results.json").read_text())["sft"]
    assert again["cached"] and again["checkpoint"] == results["checkpoint"]
    assert "SFT: reusing cached checkpoint" in second.stdout
    assert "sft:" not in second.stderr  # no training progress bar: nothing was retrained


@pytest.mark.parametrize("stage", [2])
def test_sft_on_two_data_parallel_deepspeed_actors(ray_address, tmp_path, stage):
    run_lab(ray_address, tmp_path / "run", tmp_path / "cache", f"strategy=deepspeed_zero{stage}",
            "ray.policy.num_actors=2", "trainer.max_steps=4", "trainer.log_every=1", "data.n_train=256",
            "eval.n_prompts=4", "eval.max_new_tokens=8", "eval.evaluate_init=false", "logger.wandb=false")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "sft/loss" in r] == [1, 2, 3, 4]
    ckpt = Path(json.loads((tmp_path / "run" / "results.json").read_text())["sft"]["checkpoint"])
    assert (ckpt / "config.json").is_file() and (ckpt / "lab_artifact.json").is_file()


def test_bad_sft_file_fails_before_training_naming_file_and_line(ray_address, tmp_path):
    import subprocess
    import sys

    from tests.lab import ROOT

    bad = tmp_path / "moss.jsonl"
    good = {"conversation_id": 1, "meta_instruction": "You are MOSS.\n", "num_turns": 1, "category": "writing",
            "chat": {"turn_1": {"Human": "<|Human|>: hi<eoh>\n", "Inner Thoughts": None, "Commands": None,
                                "Tool Responses": None, "MOSS": "<|MOSS|>: hello<eom>\n"}}}
    bad.write_text(json.dumps(good) + "\n" + '{"conversation_id": 2, "chat": {}}\n')
    cmd = [sys.executable, "run.py", "+experiment=sft", "data=moss_sft", f"data.path={bad}",
           f"ray.address={ray_address}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
           "logger.wandb=false"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "moss.jsonl" in out.stderr and "line 2" in out.stderr
    assert not (tmp_path / "cache" / "sft").exists()  # nothing half-written
