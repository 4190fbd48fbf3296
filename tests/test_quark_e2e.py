"""End-to-end Quark through run.py on the session's Ray, at a tiny scale: SFT → PM → PAT (round 1) →
two more rounds (sample, score, pool, re-bucket, train with the KL to SFT) → the evaluation; its keys,
its cache entries per round, and its place in the sweep's numbers (ranking, frontier, equal-KL table)."""

from __future__ import annotations

import json
import math

from experiments.reports.runs import load_runs
from experiments.reports.sweep import aggregate
from tests.lab import run_lab

TINY = ["data.n_train=400", "trainer.batch_size=8", "pm.n_prompts=12", "pm.n_val_prompts=4", "pat.n_train=160",
        "pat.trainer.batch_size=8", "pat.control_prompts=6", "eval.n_prompts=12", "eval.max_new_tokens=24",
        "algo.max_new_tokens=24", "quark.rounds=3", "quark.prompts_per_round=6", "quark.samples_per_prompt=2",
        "quark.examples_per_round=48", "quark.trainer.batch_size=8", "quark.max_new_tokens=24", "logger.wandb=false"]


def test_quark_rounds_write_their_keys_and_join_the_sweep(ray_address, tmp_path):
    out = run_lab(ray_address, tmp_path / "sweep" / "0-quark-seed0", tmp_path / "cache", "+experiment=quark", "seed=0",
                  *TINY)
    run = tmp_path / "sweep" / "0-quark-seed0"
    results = json.loads((run / "results.json").read_text())
    for judge in ("gold", "pm"):
        for other in ("sft", "pat"):
            w = results["win_rate"][judge][f"quark_vs_{other}"]
            assert 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1 and w["n"] == 12
    rounds = results["quark"]["rounds"]
    assert list(rounds) == ["1", "2", "3"]
    for row in rounds.values():
        assert 0 <= row["gold"] <= 1 and math.isfinite(row["pm_score"]) and math.isfinite(row["kl"])
    assert rounds["3"]["kl"] == results["kl"]["final"]["quark"]  # the last round's is the final point
    assert results["quark"]["pool"] == {"1": 160, "2": 12, "3": 12}
    assert [p["step"] for p in results["frontier"]["quark_path"]] == [1, 2]
    assert all(p["tag"] == 100 for p in results["frontier"]["quark_path"] + results["frontier"]["quark"])
    assert any("quark" in by_method for by_method in results["at_kl"].values())
    entries = sorted((tmp_path / "cache" / "quark").glob("*/samples.json"))
    assert len(entries) == 2 and sorted(len(json.loads(e.read_text())) for e in entries) == [12, 12]
    assert any((tmp_path / "cache" / "pat").glob("*/pat_scores.json"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("quark/kl" in r for r in rows) and any("quark/loss" in r for r in rows)
    spans = [json.loads(line)["span"] for line in (run / "timing.jsonl").read_text().splitlines()]
    assert spans[:4] == ["sft", "pm", "pat", "quark"] and "eval" in spans
    assert "quark round 2: sampling" in out.stderr and "round 3:" in out.stdout

    report = aggregate(load_runs(tmp_path / "sweep"))  # what the sweep's report reads
    assert [r["method"] for r in report["ranking"]["gold"]][:2] in (["quark", "pat"], ["pat", "quark"])
    assert [p["step"] for p in report["frontier"]["quark_path"]] == [1, 2, 3]  # from round 1 (PAT), not from SFT
    assert report["frontier"]["quark"][0]["seed"] == 0
    assert any("quark" in by_method for by_method in report["at_kl"].values())
    assert "quark_vs_pat" in report["win_rate"]["gold"]
