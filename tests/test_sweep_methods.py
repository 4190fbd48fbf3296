"""A sweep of PPO and GRPO jobs (``-m +experiment=ppo,grpo seed=0,1``): every figure is read from
the job of its own method, never from the first job in folder order, and the claims follow the
corrected intervals. The folder holds what real jobs write (``experiments/stages/ppo.py`` ``run``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.reports.runs import load_runs
from experiments.reports.sweep import aggregate
from experiments.reports.sweep_report import build, verdict

N = 40
PROMPTS = [f"p{i}" for i in range(N)]
KL = {"ppo": {0: 0.81, 1: 0.72}, "grpo": {0: 0.05, 1: 0.06}}
TOOL = [i % 4 == 0 for i in range(N)]  # every fourth prompt asks for a tool


def _sft(i: int) -> float:
    return 0.3 + 0.01 * (i % 7)


def _policy(method: str, seed: int, i: int) -> float:
    """PPO beats SFT on 3 prompts in 4 and ties the rest; GRPO wins, ties and loses in turn."""
    if method == "ppo":
        return _sft(i) + (0.2 if i % 4 else 0.0)
    return _sft(i) + (0.1, 0.0, -0.1)[(i + seed) % 3]


def _job(d: Path, method: str, seed: int) -> None:
    d.mkdir(parents=True)
    (d / "resolved_config.yaml").write_text(f"stage: {method}\nseed: {seed}\n")
    gold = {"sft": [_sft(i) for i in range(N)], method: [_policy(method, seed, i) for i in range(N)]}
    pm = {k: [x + (0.05 if k == method else 0.0) for x in v] for k, v in gold.items()}
    calls = {k: [(k == method) if t else None for t in TOOL] for k in gold}
    (d / "scores.json").write_text(json.dumps({"seed": seed, "prompts": PROMPTS, "gold": gold, "pm": pm,
                                               "lengths": {k: [10] * N for k in gold}, "tool_calls": calls}))
    path = [{"step": s, "kl": KL[method][seed] * s / 10, "gold": 0.3 + 0.01 * s, "pm": 0.1 * s} for s in range(1, 11)]
    tool_win = {"value": 0.9, "ci": [0.8, 1.0], "win": 0.9, "tie": 0.0, "lose": 0.1, "n": sum(TOOL)}
    results = {
        "wall_seconds": 60.0, "pm": {"val_accuracy": 0.8 + 0.01 * seed},
        "kl": {"final": KL[method][seed], "final_per_token": KL[method][seed] / 20},
        method: {"iterations": 10, "final": {"ppo/kl": KL[method][seed]}},
        "frontier": {method: [{"tag": None, "kl": KL[method][seed], "gold": 0.4, "pm": 0.3, "n": 8}],
                     f"{method}_training": path},
        "tool_use": {"n": sum(TOOL), "share": {method: 1.0, "sft": 0.0}, "gold": {method: 0.5, "sft": 0.3},
                     "gold_other": {method: 0.5, "sft": 0.3}, "win_rate": {f"{method}_vs_sft": tool_win},
                     "win_rate_other": {}},
        "cost": {method: {"wall_s": 50.0, "cpu_s": 90.0, "peak_rss_mb": 1.0, "gpu_peak_mb": 0.0,
                          "tokens_generated": 1.0, "param_updates": 1.0, "cached": False}},
    }
    (d / "results.json").write_text(json.dumps(results))
    rows = [{"ppo/kl": KL[method][seed] * s / 10, "ppo/reward": 0.1 * s, "ppo/gold": 0.3 + 0.01 * s,
             "policy/clip_frac": 0.1 if method == "ppo" else 0.0, "step": s} for s in range(1, 11)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def ppo_grpo(tmp_path: Path) -> Path:
    """GRPO's jobs sort before PPO's, as they do in a Hydra multirun of ``+experiment=grpo,ppo``."""
    for seed in (0, 1):
        _job(tmp_path / "sweep" / f"{2 * seed}-grpo-seed{seed}", "grpo", seed)
        _job(tmp_path / "sweep" / f"{2 * seed + 1}-ppo-seed{seed}", "ppo", seed)
    return tmp_path / "sweep"


def test_final_kl_and_curves_are_keyed_by_method_and_seed(ppo_grpo):
    r = aggregate(load_runs(ppo_grpo))
    assert r["kl"]["final"]["ppo"]["per_seed"] == [0.81, 0.72] and r["kl"]["final"]["ppo"]["seeds"] == [0, 1]
    assert r["kl"]["final"]["grpo"]["per_seed"] == [0.05, 0.06]
    assert math.isclose(r["kl"]["final"]["ppo"]["value"], 0.765)
    for m in ("ppo", "grpo"):
        for seed in (0, 1):
            kl = [p[1] for p in r["curves"][m]["ppo/kl"][str(seed)]]
            assert kl == pytest.approx([KL[m][seed] * s / 10 for s in range(1, 11)])
    assert {p[1] for p in r["curves"]["ppo"]["policy/clip_frac"]["0"]} == {0.1}
    assert {p[1] for p in r["curves"]["grpo"]["policy/clip_frac"]["1"]} == {0.0}
    assert r["frontier"]["grpo_training"][-1]["kl"] == pytest.approx((0.05 + 0.06) / 2)
    assert [p["seed"] for p in r["frontier"]["ppo"]] == [0, 1] and r["frontier"]["ppo"][0]["kl"] == 0.81


def test_claims_follow_the_corrected_intervals(ppo_grpo):
    r = aggregate(load_runs(ppo_grpo))
    gold = r["win_rate"]["gold"]
    ppo, grpo = gold["ppo_vs_sft"], gold["grpo_vs_sft"]
    assert ppo["value"] == pytest.approx(0.875) and ppo["claim"] == "beats" and ppo["p_holm"] < 0.05
    assert ppo["decided"]["value"] == 1.0  # no losses: every decided pair is a win
    assert grpo["claim"] == "is level with" and grpo["ci"][0] < 0.5 < grpo["ci"][1]
    assert gold["ppo_vs_grpo"]["p_holm"] >= gold["ppo_vs_grpo"]["p"]  # corrected over the judge's 3 pairs
    ranks = {row["method"]: row["rank"] for row in r["ranking"]["gold"]}
    assert ranks == {"ppo": [1, 1], "grpo": [2, 2]}
    lines = verdict(r)
    assert any("**PPO beats SFT**" in line and "Holm-adjusted p" in line for line in lines)
    assert any("**GRPO is level with SFT**" in line for line in lines)
    assert any(line.startswith("**GRPO is not shown to beat SFT**") for line in lines)


def test_overoptimisation_with_and_without_ties(ppo_grpo):
    r = aggregate(load_runs(ppo_grpo))
    g = r["overoptimisation"]["ppo"]
    # the PM sees PPO 0.05 higher: it never ties, so PPO wins every prompt by it (1.0) against 0.875 by gold
    assert g["value"] == pytest.approx(0.125) and g["tie_gold"] == pytest.approx(0.25) and g["tie_pm"] == 0.0
    assert g["decided"]["value"] == pytest.approx(0.0)  # over decided pairs, both judges say PPO always wins
    assert g["ci"][0] <= g["value"] <= g["ci"][1]


def test_tool_use_intervals_carry_prompt_noise(ppo_grpo):
    r = aggregate(load_runs(ppo_grpo))
    t = r["tool_use"]
    assert t["per_prompt"] and t["n"] == 10
    w = t["win_rate"]["grpo_vs_sft"]  # both seeds: the same outcomes on the 10 tool requests
    assert w["ci"][1] - w["ci"][0] > 0.2  # ten prompts: wide, although the seeds agree
    assert t["share"]["ppo"]["value"] == 1.0 and t["share"]["sft"]["value"] == 0.0


def test_the_report_names_each_method_and_draws_the_fits(ppo_grpo):
    r, images = build(ppo_grpo)
    report = (ppo_grpo / "report.md").read_text()
    assert "- PPO final KL to the SFT model (measured like every method" in report
    assert "- GRPO KL at the last iteration by its own estimator" in report
    assert "| PPO training rollouts | gold |" in report and "| GRPO training rollouts | preference model |" in report
    fits = r["frontier"]["fits"]
    assert fits["ppo_training"]["pm"]["fitted"] and fits["ppo_training"]["pm"]["r2"] > 0.9
    assert images["frontier"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((ppo_grpo / "results.json").read_text())
    assert saved["kl"]["final"]["grpo"]["per_seed"] == [0.05, 0.06]


def test_a_pretrained_models_jobs_are_judged_against_the_untrained_model_too(tmp_path):
    """Jobs that judged the untrained checkpoint (``base``, ``model=smollm2``): the sweep has
    ``sft_vs_base`` and ``<method>_vs_base`` (in the judge's Holm family), and the report ranks the
    policies against it, so "beats SFT" alone cannot hide whether SFT helped at all."""
    for seed in (0, 1):
        d = tmp_path / f"ppo-{seed}"
        _job(d, "ppo", seed)
        scores = json.loads((d / "scores.json").read_text())
        for judge in ("gold", "pm", "lengths"):
            scores[judge]["base"] = [x - 0.2 if judge != "lengths" else x for x in scores[judge]["sft"]]
        (d / "scores.json").write_text(json.dumps(scores))
    r, _ = build(tmp_path)
    gold = r["win_rate"]["gold"]
    assert {"sft_vs_base", "ppo_vs_base", "ppo_vs_sft"} <= set(gold)
    assert gold["sft_vs_base"]["value"] == 1.0 and gold["sft_vs_base"]["p_holm"] is not None
    report = (tmp_path / "report.md").read_text()
    assert "against the untrained pretrained model (base)" in report and "SFT 1.000" in report
