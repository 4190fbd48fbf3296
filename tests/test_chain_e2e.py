"""End-to-end chains through run.py on the session's Ray: SFT → PM → PAT → evaluation, then
PPO on the same cached SFT and preference model (so it is also judged against PAT)."""

from __future__ import annotations

import json
import math

import pytest

from tests.lab import run_lab

SMALL = ["data.n_train=800", "trainer.batch_size=8", "pm.n_prompts=24", "pm.n_val_prompts=6",
         "pat.n_train=400", "pat.trainer.batch_size=8", "pat.control_prompts=8", "eval.n_prompts=24",
         "eval.max_new_tokens=48", "logger.wandb=false"]


@pytest.fixture(scope="module")
def pat_run(ray_address, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    out = run_lab(ray_address, root / "pat", root / "cache", "+experiment=pat", *SMALL)
    return root, out


def _check_win_rate(w: dict, n: int) -> None:
    assert 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1
    assert math.isclose(w["win"] + w["tie"] + w["lose"], 1.0, abs_tol=1e-9) and w["n"] == n


def test_pat_chain_writes_report_and_results(ray_address, pat_run):
    root, out = pat_run
    run = root / "pat"
    results = json.loads((run / "results.json").read_text())
    for key in ("gold", "pm"):
        _check_win_rate(results["win_rate"][key]["pat_vs_sft"], 24)
    assert 0 <= results["pm"]["val_accuracy"] <= 1
    assert -1 <= results["controllability"]["spearman"] <= 1
    assert results["controllability"]["tags"] == [0, 20, 40, 60, 80, 100]
    assert sum(results["pat"]["tag_counts"].values()) == 400
    assert results["wall_seconds"] > 0
    report = (run / "report.md").read_text()
    assert "| gold judge |" in report and "Spearman" in report
    for png in ("win_rates.png", "controllability.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PAT vs SFT on held-out test prompts" in out.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("pm/loss" in r for r in rows) and any("pat/loss" in r for r in rows)

    again = run_lab(ray_address, root / "pat2", root / "cache", "+experiment=pat", *SMALL)
    assert "SFT: reusing cached checkpoint" in again.stdout
    assert "PM: reusing cached preference model" in again.stdout
    assert "PAT: reusing cached model" in again.stdout


def test_ppo_reuses_the_chain_and_joins_the_evaluation(ray_address, pat_run):
    root, _ = pat_run
    ppo = ["algo.iterations=3", "algo.rollout_batch_size=8", "algo.max_new_tokens=24", "algo.checkpoint_every=2"]
    out = run_lab(ray_address, root / "ppo", root / "cache", "+experiment=ppo", *SMALL, *ppo)
    assert "SFT: reusing cached checkpoint" in out.stdout and "PM: reusing cached preference model" in out.stdout
    results = json.loads((root / "ppo" / "results.json").read_text())
    for judge in ("gold", "pm"):
        for pair in ("ppo_vs_sft", "ppo_vs_pat"):
            _check_win_rate(results["win_rate"][judge][pair], 24)
    assert math.isfinite(results["kl"]["final"]) and results["wall_seconds"] > 0
    rows = [json.loads(line) for line in (root / "ppo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "ppo/reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("ppo/kl", "ppo/gold", "policy/entropy", "policy/clip_frac", "policy/approx_kl", "critic/value_loss",
                "critic/explained_variance", "ppo/response_length", "time/generate_s", "time/score_s",
                "time/train_s", "time/tokens_per_s"):
        assert all(key in r for r in steps), key
    assert "win_rate/gold/ppo_vs_sft" in rows[-1]
    ckpts = sorted(p.name for p in (root / "cache" / "ppo-checkpoints").glob("*/iter_*"))
    assert ckpts == ["iter_000002", "iter_000003"]
    assert "PPO on held-out test prompts" in out.stdout
