"""The sweep report builder on a fabricated sweep dir: known scores in, the right numbers out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignment.statistics.intervals import t_interval, win_rate_interval
from experiments.reports.runs import load_runs
from experiments.reports.sweep import aggregate
from experiments.reports.sweep_report import build
from experiments.runtime.costs import Ledger, peak_concurrent

PROMPTS = ["p0", "p1", "p2", "p3"]
COST = {"wall_s": 10.0, "cpu_s": 20.0, "peak_rss_mb": 100.0, "gpu_peak_mb": 0.0, "tokens_generated": 0.0,
        "param_updates": 1000.0}


def write_run(d: Path, stage: str, seed: int, gold: dict, pm: dict, results: dict, metrics: list[dict]) -> None:
    d.mkdir(parents=True)
    (d / "resolved_config.yaml").write_text(f"stage: {stage}\nseed: {seed}\n")
    (d / "scores.json").write_text(json.dumps({"seed": seed, "prompts": PROMPTS, "gold": gold, "pm": pm}))
    (d / "results.json").write_text(json.dumps(results))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


@pytest.fixture()
def sweep_dir(tmp_path):
    """Two seeds. Gold: PAT beats SFT on 3 of 4 prompts and ties 1 in seed 0, wins 2 / loses 2 in
    seed 1; PPO beats SFT on every prompt in seed 0 and on 1 (ties 3) in seed 1."""
    sft = {0: [0.2, 0.2, 0.2, 0.5], 1: [0.3, 0.3, 0.6, 0.6]}
    pat = {0: [0.4, 0.3, 0.9, 0.5], 1: [0.4, 0.4, 0.5, 0.5]}
    ppo = {0: [0.3, 0.3, 0.3, 0.6], 1: [0.4, 0.3, 0.6, 0.6]}
    pm_shift = 0.05  # the PM scores each policy's reply at gold + a per-policy shift
    for seed in (0, 1):
        pat_res = {"wall_seconds": 100.0, "pm": {"val_accuracy": 0.8 + 0.02 * seed},
                   "controllability": {"spearman": 1.0 - 0.2 * seed},
                   "frontier": {"pat": [{"tag": t, "kl": t / 50, "gold": 0.3 + t / 1000, "pm": 0.0, "n": 4}
                                        for t in (0, 50, 100)]},
                   "cost": {"sft": COST | {"cached": False}, "pm": COST | {"cached": False},
                            "pat": COST | {"cpu_s": 30.0, "cached": False}, "eval": COST | {"cached": False}}}
        ppo_res = {"wall_seconds": 50.0, "pm": {"val_accuracy": 0.8 + 0.02 * seed}, "kl": {"final": 1.0 + seed},
                   "frontier": {"ppo": [{"tag": None, "kl": 1.5, "gold": 0.4, "pm": 0.3, "n": 4}]},
                   "cost": {"sft": COST | {"cached": True}, "pm": COST | {"cached": True},
                            "ppo": COST | {"cpu_s": 90.0, "tokens_generated": 5000.0, "cached": False}}}
        write_run(tmp_path / "sweep" / f"{2 * seed}-pat-seed{seed}", "pat", seed,
                  {"sft": sft[seed], "pat": pat[seed]}, {"sft": sft[seed], "pat": [x + pm_shift for x in pat[seed]]},
                  pat_res, [{"pat/loss": 2.0 - s / 10, "step": s} for s in (1, 2, 3)])
        write_run(tmp_path / "sweep" / f"{2 * seed + 1}-ppo-seed{seed}", "ppo", seed,
                  {"sft": sft[seed], "ppo": ppo[seed]}, {"sft": sft[seed], "ppo": [x + 0.2 for x in ppo[seed]]},
                  ppo_res, [{"ppo/kl": 0.1 * s, "ppo/gold": 0.3, "ppo/reward": 0.1 * s, "step": s} for s in (1, 2)])
    return tmp_path / "sweep"


def test_aggregate_pairs_the_jobs_of_each_seed(sweep_dir):
    r = aggregate(load_runs(sweep_dir))
    gold = r["win_rate"]["gold"]
    # seed 0: PAT 3 wins + 1 tie = 0.875; seed 1: 2 wins, 2 losses = 0.5 -> mean 0.6875
    assert gold["pat_vs_sft"]["per_seed"] == {"0": 0.875, "1": 0.5}
    assert math.isclose(gold["pat_vs_sft"]["value"], 0.6875)
    assert math.isclose(gold["pat_vs_sft"]["win"], (0.75 + 0.5) / 2) and math.isclose(gold["pat_vs_sft"]["tie"], 0.125)
    # seed 0: PPO wins all 4; seed 1: 1 win, 3 ties = 0.625
    assert gold["ppo_vs_sft"]["per_seed"] == {"0": 1.0, "1": 0.625}
    # PAT vs PPO, paired although no job judged both: seed 0 PAT [.4 .3 .9 .5] vs PPO [.3 .3 .3 .6]
    # = W T W L -> 0.625; seed 1 [.4 .4 .5 .5] vs [.4 .3 .6 .6] = T W L L -> 0.375
    assert gold["pat_vs_ppo"]["per_seed"] == {"0": 0.625, "1": 0.375}
    assert gold["pat_vs_ppo"]["ci"][0] <= gold["pat_vs_ppo"]["value"] <= gold["pat_vs_ppo"]["ci"][1]
    # the PM sees PAT and PPO shifted up, so it prefers them more than the gold judge does
    assert r["win_rate"]["pm"]["ppo_vs_sft"]["per_seed"] == {"0": 1.0, "1": 1.0}
    assert math.isclose(r["overoptimisation"]["ppo"]["value"], ((1.0 - 1.0) + (1.0 - 0.625)) / 2)
    # costs: each stage once per seed, a cached record never replaces the one made when it ran
    assert r["cost"]["pat"]["cpu_s"] == 30.0 and r["cost"]["ppo"]["cpu_s"] == 90.0
    assert r["cost"]["ppo"]["tokens_generated"] == 5000.0 and r["cost"]["sft"]["seeds"] == 2
    assert math.isclose(r["pm"]["val_accuracy"]["value"], 0.81) and math.isclose(r["kl"]["final"]["ppo"]["value"], 1.5)
    assert [p["tag"] for p in r["frontier"]["pat"]] == [0, 50, 100] and len(r["frontier"]["ppo"]) == 2
    assert [p["step"] for p in r["frontier"]["ppo_training"]] == [1, 2]
    assert r["curves"]["pat"]["pat/loss"]["1"] == [[1, 1.9], [2, 1.8], [3, 1.7]]
    assert r["wall_seconds"] == 300.0


def test_build_writes_the_table_the_figures_and_results(sweep_dir):
    r, images = build(sweep_dir)
    report = (sweep_dir / "report.md").read_text()
    assert "| PAT vs SFT | gold judge | 0.62 | 0.12 | 0.25 | **0.688** |" in report
    assert "| PPO vs SFT | gold judge | 0.62 | 0.38 | 0.00 | **0.812** |" in report
    assert "On the gold judge, **PAT beats SFT**" in report or "On the gold judge, **PAT is level with SFT**" in report
    assert "PPO costs **3.0x** PAT's CPU time" in report
    saved = json.loads((sweep_dir / "results.json").read_text())
    assert saved["win_rate"]["gold"]["pat_vs_ppo"]["value"] == r["win_rate"]["gold"]["pat_vs_ppo"]["value"]
    for path in images.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_knob_sweep_gets_one_report_per_setting(sweep_dir):
    """``-m +experiment=pat,ppo algo.beta=0.01,0.05 seed=0,1``: jobs that differ in a knob are never
    pooled; each setting pairs its own methods and seeds, and the index lists them side by side."""
    for job in sorted(sweep_dir.iterdir()):  # the fixture's jobs ran with beta 0.01
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- +experiment={job.name.split('-')[1]}\n- algo.beta=0.01\n- cache_dir=/c\n- seed={job.name[-1]}\n")
    # beta 0.05: PPO of seed 0 now loses every prompt to SFT (its SFT replies are the same)
    sft0 = [0.2, 0.2, 0.2, 0.5]
    write_run(sweep_dir / "4-ppo-seed0", "ppo", 0, {"sft": sft0, "ppo": [0.0] * 4}, {"sft": sft0, "ppo": [0.0] * 4},
              {"wall_seconds": 50.0, "kl": {"final": 9.0},
               "frontier": {"ppo": [{"tag": None, "kl": 9.0, "gold": 0.4, "pm": 0.3, "n": 4}]},
               "cost": {"ppo": COST | {"cached": False}}}, [])
    (sweep_dir / "4-ppo-seed0" / ".hydra").mkdir()
    (sweep_dir / "4-ppo-seed0" / ".hydra" / "overrides.yaml").write_text(
        "- +experiment=ppo\n- algo.beta=0.05\n- cache_dir=/c\n- seed=0\n")

    r, images = build(sweep_dir)
    assert set(r["variants"]) == {"algo.beta=0.01", "algo.beta=0.05"}
    low, high = r["variants"]["algo.beta=0.01"], r["variants"]["algo.beta=0.05"]
    assert low["win_rate"]["gold"]["ppo_vs_sft"]["per_seed"] == {"0": 1.0, "1": 0.625}  # as without the knob
    assert high["win_rate"]["gold"]["ppo_vs_sft"]["per_seed"] == {"0": 0.0}
    assert high["kl"]["final"]["ppo"]["value"] == 9.0
    assert "pat_vs_sft" not in high["win_rate"]["gold"]  # no PAT job ran with beta 0.05
    index = (sweep_dir / "report.md").read_text()
    assert "| `algo.beta=0.05` | 1 |" in index and "variants/algo.beta=0.05/report.md" in index
    sub = sweep_dir / "variants" / "algo.beta=0.01"
    assert "| PAT vs SFT | gold judge | 0.62 | 0.12 | 0.25 | **0.688** |" in (sub / "report.md").read_text()
    assert json.loads((sweep_dir / "results.json").read_text())["variants"]["algo.beta=0.05"]["seeds"] == [0]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in images.values())


def test_where_a_job_ran_is_not_a_knob(sweep_dir):
    """Jobs run on another cluster or with other logging (``ray.address=local``, ``logger.wandb=false``)
    trained the same thing: they pool with the rest, not into a variant of their own."""
    for i, job in enumerate(sorted(sweep_dir.iterdir())):
        extra = "- ray.address=local\n- logger.wandb=false\n" if i % 2 else ""
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- +experiment={job.name.split('-')[1]}\n{extra}- seed={job.name[-1]}\n")
    r, _ = build(sweep_dir)
    assert "variants" not in r and r["win_rate"]["gold"]["pat_vs_sft"]["value"] is not None


def test_runs_judged_on_other_prompts_are_refused(sweep_dir):
    scores = sweep_dir / "1-ppo-seed0" / "scores.json"
    s = json.loads(scores.read_text())
    scores.write_text(json.dumps(s | {"prompts": ["q0", "q1", "q2", "q3"]}))
    with pytest.raises(ValueError, match="1-ppo-seed0/scores.json: judged other test prompts"):
        aggregate(load_runs(sweep_dir))


def test_bad_metrics_line_names_file_and_line(sweep_dir):
    (sweep_dir / "0-pat-seed0" / "metrics.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        load_runs(sweep_dir)


def test_win_rate_interval_over_seeds_and_prompts():
    one = [1, 1, 0, -1]
    w = win_rate_interval([one])
    assert math.isclose(w.value, 0.625) and w.low < 0.625 < w.high and w.df == 3  # one seed: over prompts
    w = win_rate_interval([[1] * 10, [-1] * 10])
    assert w.value == 0.5 and w.low == 0.0 and w.high == 1.0  # seeds that disagree: no claim
    same = win_rate_interval([[1] * 10, [1] * 10])
    assert (same.low, same.high, same.p) == (1.0, 1.0, 0.0)
    m = t_interval([0.2, 0.4, 0.6])
    assert math.isclose(m.value, 0.4) and m.low < 0.2 and m.high > 0.6  # wider than [min, max] with 3 seeds
    assert t_interval([0.7]).low is None  # one seed: no seed-level interval


def test_ledger_spans_overlap_and_costs_reach_the_artifact(tmp_path):
    ledger = Ledger(tmp_path, origin=0.0)
    art = tmp_path / "artifact"
    art.mkdir()
    with ledger.span("pat") as span:
        ledger.recorder("pat")({"role": "policy", "ranks": 1, "started": 1.0, "ended": 5.0, "cpu_s": 3.0,
                                "peak_rss_mb": 100.0, "gpu_peak_mb": 0.0, "tokens_generated": 0.0,
                                "param_updates": 10.0})
        ledger.recorder("pat")({"role": "preference", "ranks": 1, "started": 2.0, "ended": 3.0, "cpu_s": 1.0,
                                "peak_rss_mb": 50.0, "gpu_peak_mb": 0.0, "tokens_generated": 0.0,
                                "param_updates": 0.0})
        span.artifact = art
    cost = json.loads((art / "cost.json").read_text())
    assert cost["cpu_s"] >= 4.0 and cost["peak_rss_mb"] == 150.0 and cost["param_updates"] == 10.0
    row = json.loads((tmp_path / "timing.jsonl").read_text())
    assert row["span"] == "pat" and row["end_s"] >= row["start_s"]
    ledger.reused("sft", art)
    assert ledger.summary()["sft"]["cached"] and not ledger.summary()["pat"]["cached"]
    # groups one after the other do not add up
    seq = [{"started": 0, "ended": 1, "m": 5.0}, {"started": 1, "ended": 2, "m": 7.0}]
    assert peak_concurrent(seq, "m") == 7.0


@pytest.fixture()
def four_methods(sweep_dir):
    """The PAT and PPO jobs plus a DPO job (gold: beats SFT on every prompt of both seeds) and a
    best-of-n job (gold: loses every prompt to SFT) per seed: ``-m +experiment=pat,ppo,dpo,bon``."""
    sft = {0: [0.2, 0.2, 0.2, 0.5], 1: [0.3, 0.3, 0.6, 0.6]}
    for seed in (0, 1):
        dpo, bon = [x + 0.3 for x in sft[seed]], [x - 0.1 for x in sft[seed]]
        write_run(sweep_dir / f"{4 + seed}-dpo-seed{seed}", "dpo", seed, {"sft": sft[seed], "dpo": dpo},
                  {"sft": sft[seed], "dpo": dpo},
                  {"wall_seconds": 20.0,
                   "frontier": {"dpo": [{"tag": None, "kl": 2.0, "gold": 0.6, "pm": 0.5, "n": 4}]},
                   "cost": {"sft": COST | {"cached": True}, "dpo": COST | {"cpu_s": 40.0, "cached": False}}}, [])
        write_run(sweep_dir / f"{6 + seed}-bon-seed{seed}", "bon", seed, {"sft": sft[seed], "bon": bon},
                  {"sft": sft[seed], "bon": [x + 0.4 for x in bon]},
                  {"wall_seconds": 30.0,
                   "bon": {"n_max": 4, "ns": [1, 4], "curve": [{"n": n, "kl": math.log(n) - (n - 1) / n,
                                                                "gold": 0.3 + 0.01 * n + 0.01 * seed, "pm": 0.1 * n}
                                                               for n in (1, 4)]},
                   "cost": {"bon": COST | {"tokens_generated": 800.0, "cached": False}}}, [])
    return sweep_dir


def test_every_method_is_paired_ranked_and_drawn(four_methods):
    r, images = build(four_methods)
    gold = r["win_rate"]["gold"]
    # every method against SFT, then every two methods in the known order (PAT, PPO, DPO, ..., BoN)
    assert list(gold) == ["pat_vs_sft", "ppo_vs_sft", "dpo_vs_sft", "bon_vs_sft", "pat_vs_ppo", "pat_vs_dpo",
                          "pat_vs_bon", "ppo_vs_dpo", "ppo_vs_bon", "dpo_vs_bon"]
    assert gold["dpo_vs_sft"]["per_seed"] == {"0": 1.0, "1": 1.0}
    assert gold["bon_vs_sft"]["per_seed"] == {"0": 0.0, "1": 0.0}
    assert gold["pat_vs_ppo"]["per_seed"] == {"0": 0.625, "1": 0.375}  # as in the sweep of PAT and PPO alone
    assert gold["pat_vs_bon"]["per_seed"]["0"] == 1.0 and "bon_vs_pat" not in gold
    saved = json.loads((four_methods / "results.json").read_text())
    assert saved["win_rate"]["gold"]["dpo_vs_sft"]["value"] == 1.0 and "pat_vs_bon" in saved["win_rate"]["gold"]
    assert set(r["overoptimisation"]) == {"pat", "ppo", "dpo", "bon"}
    assert math.isclose(r["overoptimisation"]["bon"]["value"], 1.0)  # the PM prefers BoN everywhere, gold never
    assert r["cost"]["dpo"]["cpu_s"] == 40.0 and r["cost"]["bon"]["tokens_generated"] == 800.0
    assert [p["seed"] for p in r["frontier"]["dpo"]] == [0, 1] and len(r["frontier"]["ppo"]) == 2
    assert [p["n"] for p in r["frontier"]["bon"]] == [1, 4]
    assert math.isclose(r["frontier"]["bon"][1]["gold"], 0.345) and r["frontier"]["bon"][1]["seeds"] == 2

    report = (four_methods / "report.md").read_text()
    assert report.startswith("# Which method, at what cost: PAT vs PPO vs DPO vs BoN vs SFT\n")
    ranking = next(line for line in report.splitlines() if line.startswith("Ranking by win rate against SFT"))
    assert "DPO 1.000 [1.000, 1.000], rank 1" in ranking and ", PPO 0.812 [" in ranking
    order = [ranking.index(f" {name} ") for name in ("DPO", "PPO", "PAT", "BoN")]
    assert order == sorted(order)
    assert "**BoN is not shown to beat SFT** on the gold judge" in report
    assert "**DPO is not shown to beat SFT**" not in report
    assert "| PAT vs BoN | gold judge |" in report and "| DPO vs SFT | gold judge | 1.00 | 0.00 | 0.00 |" in report
    assert "| DPO final, seed 1 | 2.00 | 0.600 | 0.500 |" in report and "| best-of-4 |" in report
    assert "PPO costs **3.0x** PAT's CPU time" in report and "DPO 0.7 CPU-min" in report
    assert set(images) >= {"summary", "win_matrix", "overoptimisation", "frontier", "cost"}
    for path in images.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_win_matrix_reads_each_pair_both_ways(four_methods):
    from experiments.reports.sweep_plots import win_matrix

    r = aggregate(load_runs(four_methods))
    policies = ["pat", "ppo", "dpo", "bon", "sft"]
    m = win_matrix(r, "gold", policies)
    w = r["win_rate"]["gold"]["pat_vs_ppo"]["value"]
    assert math.isclose(m[0, 1], w) and math.isclose(m[1, 0], 1 - w)
    assert m[2, 4] == 1.0 and m[4, 2] == 0.0 and math.isnan(m[0, 0])
