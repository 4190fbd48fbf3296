"""MOSS's tools through the chain, end to end on the session's Ray: a world with tool-use requests
(``data.world.tool_share``) and ``tools.enabled``: SFT trains on plugin turns, PAT tags them, PPO's
rollouts run the tools between passes (what they write outside the response mask), and every
report gives the tool-use share and the gold score and win rates on tool requests."""

from __future__ import annotations

import json

from tests.lab import run_lab

TOOLS = ["data.world.tool_share=0.4", "tools.enabled=true", "data.n_train=600", "trainer.batch_size=8",
         "pm.n_prompts=16", "pm.n_val_prompts=6", "pat.n_train=300", "pat.trainer.batch_size=8",
         "pat.control_prompts=6", "eval.n_prompts=30", "eval.max_new_tokens=32", "algo.iterations=2",
         "algo.rollout_batch_size=8", "algo.max_new_tokens=16", "logger.wandb=false"]


def test_tool_use_runs_through_sft_pat_ppo_and_the_reports(ray_address, tmp_path):
    out = run_lab(ray_address, tmp_path / "sweep", tmp_path / "cache", "+experiment=pat,ppo", "seed=0", *TOOLS,
                  multirun=True)
    assert "Tool use" in (tmp_path / "sweep" / "report.md").read_text()
    for job, method in (("0-pat-seed0", "pat"), ("1-ppo-seed0", "ppo")):
        run = tmp_path / "sweep" / job
        results = json.loads((run / "results.json").read_text())
        tools = results["tool_use"]
        assert 0 < tools["n"] < 30 and {method, "sft"} <= set(tools["share"])
        assert all(0 <= v <= 1 for v in [*tools["share"].values(), *tools["gold"].values()])
        for part in ("win_rate", "win_rate_other"):
            w = tools[part][f"{method}_vs_sft"]
            assert 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1
    ppo = [json.loads(line) for line in (tmp_path / "sweep" / "1-ppo-seed0" / "metrics.jsonl").read_text().splitlines()]
    calls = [r["ppo/tool_calls"] for r in ppo if "ppo/tool_calls" in r]  # rollouts went through the tools
    assert len(calls) == 2 and all(0 <= c <= 1 for c in calls)
    pat_report = (tmp_path / "sweep" / "0-pat-seed0" / "report.md").read_text()
    assert "## Tool use" in pat_report and "gold win rate on tool requests" in pat_report
    assert "SFT" in out.stdout
