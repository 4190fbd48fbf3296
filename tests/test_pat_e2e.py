"""End-to-end PAT (SFT → PM → PAT → evaluation) through run.py, on the session's Ray."""

from __future__ import annotations

import json
import math

from tests.lab import run_lab


def test_pat_chain_writes_report_and_results(ray_address, tmp_path):
    small = ["data.n_train=800", "trainer.batch_size=8", "pm.n_prompts=24", "pm.n_val_prompts=6",
             "pat.n_train=400", "pat.trainer.batch_size=8", "pat.control_prompts=8", "eval.n_prompts=24",
             "eval.max_new_tokens=48", "logger.wandb=false"]
    out = run_lab(ray_address, tmp_path / "run", tmp_path / "cache", "+experiment=pat", *small)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    for key in ("gold", "pm"):
        w = results["win_rate"][key]["pat_vs_sft"]
        assert 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1
        assert math.isclose(w["win"] + w["tie"] + w["lose"], 1.0, abs_tol=1e-9) and w["n"] == 24
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

    again = run_lab(ray_address, tmp_path / "run2", tmp_path / "cache", "+experiment=pat", *small)
    assert "SFT: reusing cached checkpoint" in again.stdout
    assert "PM: reusing cached preference model" in again.stdout
    assert "PAT: reusing cached model" in again.stdout
