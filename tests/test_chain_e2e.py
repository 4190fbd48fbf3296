"""End-to-end through run.py on the session's Ray: one small multirun of every method,
``-m +experiment=pat,ppo,dpo,grpo,rloo,bon`` (SFT → PM → PAT → evaluation, then each other method
on the same cached SFT and preference model), its sweep report, and ``+experiment=compare``
training PAT, PPO and GRPO side by side on those artifacts, with best-of-n beside them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from experiments.reports.sweep import pairs_of
from tests.lab import run_lab

SMALL = ["data.n_train=800", "trainer.batch_size=8", "pm.n_prompts=24", "pm.n_val_prompts=6",
         "pat.n_train=400", "pat.trainer.batch_size=8", "pat.control_prompts=8", "eval.n_prompts=24",
         "eval.max_new_tokens=48", "algo.iterations=3", "algo.rollout_batch_size=8", "algo.max_new_tokens=24",
         "algo.checkpoint_every=2", "logger.wandb=false"]
PNG = b"\x89PNG\r\n\x1a\n"
METHODS = ["pat", "ppo", "dpo", "grpo", "rloo", "bon"]
# the other methods at the same small scale: DPO on 4 of the PM's groups, best-of-4
OTHERS = ["dpo.n_prompts=4", "dpo.trainer.batch_size=8", "dpo.max_length=192", "bon.n_max=4", "bon.ns=[1,2,4]"]


@pytest.fixture(scope="module")
def sweep(ray_address, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    out = run_lab(ray_address, root / "sweep", root / "cache", f"+experiment={','.join(METHODS)}", "seed=0", *SMALL,
                  *OTHERS, multirun=True)
    return root, out


def _check_win_rate(w: dict, n: int) -> None:
    assert 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1
    assert math.isclose(w["win"] + w["tie"] + w["lose"], 1.0, abs_tol=1e-9) and w["n"] == n


def test_pat_chain_writes_report_and_results(ray_address, sweep):
    root, out = sweep
    run = root / "sweep" / "0-pat-seed0"
    results = json.loads((run / "results.json").read_text())
    for key in ("gold", "pm"):
        _check_win_rate(results["win_rate"][key]["pat_vs_sft"], 24)
    assert 0 <= results["pm"]["val_accuracy"] <= 1
    assert -1 <= results["controllability"]["spearman"] <= 1
    assert results["controllability"]["tags"] == [0, 20, 40, 60, 80, 100]
    assert sum(results["pat"]["tag_counts"].values()) == 400
    assert [p["tag"] for p in results["frontier"]["pat"]] == [0, 20, 40, 60, 80, 100]
    assert all(math.isfinite(p["kl"]) and 0 <= p["gold"] <= 1 for p in results["frontier"]["pat"])
    assert results["wall_seconds"] > 0
    for stage in ("sft", "pm", "pat"):
        cost = results["cost"][stage]
        assert not cost["cached"] and cost["cpu_s"] > 0 and cost["peak_rss_mb"] > 0 and cost["param_updates"] > 0
    assert list((root / "cache" / "pat").glob("*/cost.json"))
    report = (run / "report.md").read_text()
    assert "| gold judge |" in report and "Spearman" in report
    for png in ("win_rates.png", "controllability.png"):
        assert (run / png).read_bytes()[:8] == PNG
    assert "PAT vs SFT on held-out test prompts" in out.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("pm/loss" in r for r in rows) and any("pat/loss" in r for r in rows)
    spans = [json.loads(line)["span"] for line in (run / "timing.jsonl").read_text().splitlines()]
    assert spans == ["sft", "pm", "pat", "eval"]

    again = run_lab(ray_address, root / "pat2", root / "cache", "+experiment=pat", "seed=0", *SMALL)
    assert "SFT: reusing cached checkpoint" in again.stdout
    assert "PM: reusing cached preference model" in again.stdout
    assert "PAT: reusing cached model" in again.stdout
    assert "EVAL: reusing cached replies" in again.stdout
    cost = json.loads((root / "pat2" / "results.json").read_text())["cost"]
    assert cost["pat"]["cached"] and cost["pat"]["cpu_s"] == results["cost"]["pat"]["cpu_s"]


def test_ppo_reuses_the_chain_and_joins_the_evaluation(ray_address, sweep):
    root, out = sweep
    run = root / "sweep" / "1-ppo-seed0"
    assert "SFT: reusing cached checkpoint" in out.stdout and "PM: reusing cached preference model" in out.stdout
    results = json.loads((run / "results.json").read_text())
    for judge in ("gold", "pm"):
        for pair in ("ppo_vs_sft", "ppo_vs_pat"):
            _check_win_rate(results["win_rate"][judge][pair], 24)
    assert math.isfinite(results["kl"]["final"]["ppo"]) and results["wall_seconds"] > 0
    assert math.isfinite(results["kl"]["training_final"]["ppo"])
    # the policies saved along training (algo.path_points), measured like the final one, from the SFT point
    assert [p["step"] for p in results["frontier"]["ppo_path"]] == [1, 2] and results["frontier"]["sft"]["step"] == 0
    assert set(results["at_kl"]) == {"0.5", "1", "2", "4"} and set(results["at_kl"]["1"]) == {"ppo"}
    assert results["cost"]["ppo"]["tokens_generated"] >= 3 * 8 and results["cost"]["sft"]["cached"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "ppo/reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("ppo/kl", "ppo/gold", "policy/entropy", "policy/clip_frac", "policy/approx_kl", "critic/value_loss",
                "critic/explained_variance", "ppo/response_length", "time/generate_s", "time/score_s",
                "time/train_s", "time/tokens_per_s"):
        assert all(key in r for r in steps), key
    assert "win_rate/gold/ppo_vs_sft" in rows[-1]
    # committed: the checkpoints are dropped; the saved path lives in the artifact
    assert not list((root / "cache" / "ppo-checkpoints").glob("*/iter_*"))
    assert sorted(p.name for p in (Path(results["artifacts"]["ppo"]) / "path").iterdir()) == ["iter_000001",
                                                                                              "iter_000002"]
    assert "PPO on held-out test prompts" in out.stdout


def test_dpo_grpo_rloo_and_bon_jobs_reuse_the_chain(sweep):
    root, _ = sweep
    d = root / "sweep"
    dpo = json.loads((d / "2-dpo-seed0" / "results.json").read_text())
    assert dpo["dpo"]["pairs"] == 4 * 15 and dpo["dpo"]["groups"] == 4
    assert not dpo["cached"]["dpo"] and dpo["cost"]["dpo"]["param_updates"] > 0 and dpo["cost"]["sft"]["cached"]
    rows = [json.loads(line) for line in (d / "2-dpo-seed0" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "dpo/loss" in r]
    assert steps and all(k in steps[-1] for k in ("dpo/reward_accuracy", "dpo/margin", "dpo/chosen_logps",
                                                   "dpo/rejected_logps"))
    for m, job in (("dpo", "2-dpo-seed0"), ("grpo", "3-grpo-seed0"), ("rloo", "4-rloo-seed0"), ("bon", "5-bon-seed0")):
        results = json.loads((d / job / "results.json").read_text())
        for judge in ("gold", "pm"):
            _check_win_rate(results["win_rate"][judge][f"{m}_vs_sft"], 24)
    for m, job in (("grpo", "3-grpo-seed0"), ("rloo", "4-rloo-seed0")):
        results = json.loads((d / job / "results.json").read_text())
        assert [p["step"] for p in results["frontier"][f"{m}_training"]] == [1, 2, 3]
        assert not list((root / "cache" / f"{m}-checkpoints").glob("*/iter_*"))  # dropped once committed
        rows = [json.loads(line) for line in (d / job / "metrics.jsonl").read_text().splitlines()]
        assert not any(k.startswith("critic/") for r in rows for k in r)  # no critic
    assert [p["n"] for p in json.loads((d / "5-bon-seed0" / "results.json").read_text())["bon"]["curve"]] == [1, 2, 4]


def test_multirun_ends_with_the_sweep_report(sweep):
    root, out = sweep
    d = root / "sweep"
    results = json.loads((d / "results.json").read_text())
    assert results["seeds"] == [0] and sorted(r["stage"] for r in results["runs"]) == sorted(METHODS)
    for judge in ("gold", "pm"):
        # every method against SFT, then every two methods
        assert set(results["win_rate"][judge]) == {f"{a}_vs_{b}" for a, b in pairs_of(METHODS)}
        assert len(results["win_rate"][judge]) == 6 + 15
        for w in results["win_rate"][judge].values():
            _check_win_rate(w, 24)
    # the sweep pairs the jobs prompt by prompt: PPO vs PAT from the sweep equals the PPO job's own
    job = json.loads((d / "1-ppo-seed0" / "results.json").read_text())["win_rate"]["gold"]["ppo_vs_pat"]
    assert math.isclose(results["win_rate"]["gold"]["pat_vs_ppo"]["value"], 1 - job["value"])
    assert set(results["cost"]) >= {"sft", "pm", *METHODS}
    f = results["frontier"]
    assert f["ppo_training"] and f["grpo_training"] and f["rloo_training"] and len(f["pat"]) == 6
    assert [p["n"] for p in f["bon"]] == [1, 2, 4] and f["dpo"] and f["grpo"] and f["rloo"]
    assert set(results["overoptimisation"]) == set(METHODS)
    report = (d / "report.md").read_text()
    assert report.startswith("# Which method, at what cost: PAT vs PPO vs DPO vs GRPO vs RLOO vs BoN vs SFT")
    assert "Ranking by win rate against SFT on the gold judge" in report
    assert "| PAT vs PPO | gold judge |" in report and "| GRPO vs BoN | gold judge |" in report
    for png in ("summary", "win_matrix", "overoptimisation", "frontier", "learning_curves", "cost"):
        assert (d / f"{png}.png").read_bytes()[:8] == PNG, png
    assert f"Sweep report: {d / 'report.md'}" in out.stdout


def test_compare_trains_the_methods_side_by_side(ray_address, sweep):
    root, _ = sweep
    # new PAT, PPO and GRPO settings (so they train now) on the cached SFT and preference model;
    # best-of-n's samples are the sweep's
    methods = ["pat", "ppo", "grpo", "bon"]
    out = run_lab(ray_address, root / "compare", root / "cache", "+experiment=compare", "seed=0", *SMALL, *OTHERS,
                  f"compare.methods=[{','.join(methods)}]", "pat.trainer.max_steps=30", "algo.iterations=2",
                  "compare.grpo.iterations=2", "compare.grpo.rollout_batch_size=8",
                  "compare.grpo.max_new_tokens=24")
    assert "SFT: reusing cached checkpoint" in out.stdout and "PM: reusing cached preference model" in out.stdout
    assert "(bon-samples)" in out.stdout  # reused
    run = root / "compare"
    spans = {json.loads(line)["span"]: json.loads(line) for line in (run / "timing.jsonl").read_text().splitlines()}
    pat, ppo = spans["pat"], spans["ppo"]
    assert min(pat["end_s"], ppo["end_s"]) > max(pat["start_s"], ppo["start_s"])  # they overlapped
    assert "grpo" in spans and "bon" in spans
    results = json.loads((run / "results.json").read_text())
    assert results["concurrency"]["overlap_s"] > 0 and results["methods"] == methods
    assert not results["cached"]["grpo"] and results["grpo"]["final"]["ppo/iteration"] == 2
    for judge in ("gold", "pm"):
        assert set(results["win_rate"][judge]) == {f"{a}_vs_{b}" for a, b in pairs_of(methods)}
    assert [p["step"] for p in results["frontier"]["grpo_training"]] == [1, 2]
    assert [p["n"] for p in results["bon"]["curve"]] == [1, 2, 4] and results["frontier"]["grpo"]
    for png in ("summary", "frontier", "timeline", "win_matrix"):
        assert (run / f"{png}.png").read_bytes()[:8] == PNG
    report = (run / "report.md").read_text()
    assert "Ranking by win rate against SFT" in report and "| GRPO vs BoN | gold judge |" in report
    assert "PAT and PPO overlapped for" in out.stdout


def test_a_nan_in_ppo_stops_the_run_at_its_iteration_and_commits_nothing(ray_address, sweep):
    import os
    import subprocess
    import sys

    from tests.lab import ROOT

    root, _ = sweep
    before = sorted(p.name for p in (root / "cache" / "ppo").iterdir())
    # a critic learning rate that blows its values up: the next advantages and losses are not finite
    cmd = [sys.executable, "run.py", "+experiment=ppo", f"ray.address={ray_address}", f"cache_dir={root / 'cache'}",
           f"hydra.run.dir={root / 'nan'}", "seed=0", *SMALL, "algo.critic_optim.lr=1e30", "algo.iterations=3"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT)))
    assert out.returncode != 0
    assert re.search(r"NonFiniteError: ppo: step [1-3]: \S+ = (nan|inf|-inf)", out.stderr), out.stderr[-3000:]
    assert sorted(p.name for p in (root / "cache" / "ppo").iterdir()) == before  # nothing committed


def test_ppo_survives_an_actor_killed_in_the_middle(ray_address, sweep):
    """SIGKILL the critic's process halfway through a PPO run: the driver starts the roles afresh
    from the last checkpoint and finishes by itself, with ``restarts: 1`` in ``results.json``."""
    import os
    import subprocess
    import sys
    import time

    from benchmarks.faults import kill_role, latest_iteration
    from scripts.dashboard_screenshot import stop
    from tests.lab import ROOT

    root, _ = sweep
    run = root / "killed"
    cmd = [sys.executable, "run.py", "+experiment=ppo", f"ray.address={ray_address}", f"cache_dir={root / 'cache'}",
           f"hydra.run.dir={run}", "seed=0", *SMALL, "algo.iterations=12", "algo.checkpoint_every=2"]
    out, err = root / "killed.out", root / "killed.err"  # files, not pipes: nothing reads them while it runs
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=o, stderr=e, text=True,
                                env=dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT)))
        try:
            deadline = time.time() + 600
            while latest_iteration(run) < 3:  # a checkpoint (iteration 2) is written; kill in the iterations after
                assert proc.poll() is None and time.time() < deadline, err.read_text()[-3000:]
                time.sleep(0.2)  # polling the run's own log for its progress
            kill_role("ppo-", "critic")
            proc.wait(timeout=900)
        finally:  # never leave the run going (it would commit behind the next test's back)
            stop(proc)
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 0, stderr[-4000:]
    results = json.loads((run / "results.json").read_text())
    assert results["restarts"] == 1 and results["ppo"]["final"]["ppo/iteration"] == 12
    cause = results["restart_causes"][0]
    assert cause["iteration"] >= 3 and "Actor" in cause["error"]
    assert "PPO: an actor was lost at iteration" in stdout and "restart 1 of at most 2" in stdout
    assert "PPO: resuming from" in stdout
