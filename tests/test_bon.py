"""Best-of-n: the maths (analytic KL, selection over the first n), the config checks, and
``+experiment=bon`` end to end through run.py (a rerun reuses the cached samples)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from alignment.statistics.best_of_n import analytic_kl, best_index, best_of_n, pick_groups
from experiments.config import register
from experiments.validation import validate
from tests.lab import run_lab

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register()


def test_analytic_kl_is_zero_at_one_and_grows_with_n():
    assert analytic_kl(1) == 0.0
    assert analytic_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert analytic_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    kls = [analytic_kl(n) for n in range(1, 65)]
    assert all(a < b for a, b in zip(kls, kls[1:]))
    with pytest.raises(ValueError):
        analytic_kl(0)


def test_selection_reads_only_the_first_n_and_takes_the_first_of_ties():
    scores = [0.1, 0.5, 0.3, 0.5, 9.0]
    replies = ["a", "b", "c", "d", "e"]
    assert best_of_n(scores, replies, 1) == "a"
    assert best_of_n(scores, replies, 2) == "b"
    assert best_of_n(scores, replies, 4) == "b"  # 0.5 twice: the first
    assert best_of_n(scores, replies, 5) == "e"  # the best sample only counts once it is among the first n
    assert best_index([2.0, 2.0, 2.0], 3) == 0
    with pytest.raises(ValueError):
        best_of_n(scores, replies, 6)
    with pytest.raises(ValueError):
        best_of_n(scores, replies[:4], 2)


def test_pick_groups_selects_within_each_prompts_samples():
    # two prompts, four samples each, in a row
    scores = [0.0, 1.0, 3.0, 2.0, 5.0, 4.0, 4.0, 6.0]
    assert pick_groups(scores, 4, 1) == [0, 4]
    assert pick_groups(scores, 4, 2) == [1, 4]
    assert pick_groups(scores, 4, 4) == [2, 7]
    with pytest.raises(ValueError):
        pick_groups(scores, 3, 2)
    with pytest.raises(ValueError):
        pick_groups(scores, 4, 5)


def test_curve_points_follow_the_picks():
    from experiments.stages.bon import curve

    texts = ["a", "a", "b", "c", "d", "e", "e", "e"]
    pm = [0.0, 1.0, 3.0, 2.0, 5.0, 4.0, 4.0, 6.0]
    gold = [0.1, 0.2, 0.9, 0.3, 0.5, 0.4, 0.4, 0.0]
    points = curve([1, 2, 4], 4, texts, pm, gold, [0.5, 0.5], [0.3, 0.3], seed=0)
    assert [p["n"] for p in points] == [1, 2, 4]
    assert [p["kl"] for p in points] == [analytic_kl(n) for n in (1, 2, 4)]
    assert points[2]["pm"] == pytest.approx((3.0 + 6.0) / 2) and points[2]["gold"] == pytest.approx(0.45)
    assert points[0]["distinct"] == 1 and points[1]["distinct"] == pytest.approx(1.5)  # "a","a" and "d","e"
    w = points[2]["win_rate"]["gold"]
    assert w["win"] == 0.5 and w["lose"] == 0.5 and w["n"] == 2 and w["ci"][0] <= w["value"] <= w["ci"][1]
    assert "gold" not in curve([1], 4, texts, pm, None, [0.5, 0.5], None, seed=0)[0]["win_rate"]


def _lab(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=["+experiment=bon", *overrides]))


@pytest.mark.parametrize("overrides, match", [
    (["bon.n_max=0", "bon.ns=[1]"], r"bon\.n_max"),
    (["bon.ns=[]"], r"bon\.ns is empty"),
    (["bon.n_max=4"], r"bon\.ns: 8"),  # the default ns go up to 16
    (["bon.ns=[0,2]"], r"bon\.ns: 0"),
    (["eval.do_sample=false"], r"eval\.do_sample"),
])
def test_bad_bon_settings_fail_before_anything_starts(overrides, match):
    lab = _lab([])
    assert lab.stage == "bon" and lab.bon.n_max == 16 and lab.bon.ns == [1, 2, 4, 8, 16]
    assert not lab.eval.evaluate_init
    validate(lab)
    validate(_lab(["bon.n_max=4", "bon.ns=[1,2,4]"]))
    with pytest.raises(ValueError, match=match):
        validate(_lab(overrides))


# smaller than test_chain_e2e's SMALL (SFT on 240 conversations): this checks the plumbing, not the model
SMALL = ["data.n_train=240", "trainer.batch_size=8", "pm.n_prompts=16", "pm.n_val_prompts=6", "eval.n_prompts=16",
         "eval.max_new_tokens=32", "logger.wandb=false", "bon.n_max=4", "bon.ns=[1,2,4]"]
N = 16  # eval.n_prompts


def test_bon_end_to_end_and_rerun_reuses_the_samples(ray_address, tmp_path):
    out = run_lab(ray_address, tmp_path / "run1", tmp_path / "cache", "+experiment=bon", "seed=0", *SMALL)
    run = tmp_path / "run1"
    results = json.loads((run / "results.json").read_text())
    for judge in ("gold", "pm"):
        w = results["win_rate"][judge]["bon_vs_sft"]
        assert 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1 and w["n"] == N
        assert math.isclose(w["win"] + w["tie"] + w["lose"], 1.0, abs_tol=1e-9) and "lc" in w
    assert set(results["length"]) == {"bon", "sft"} and set(results["gold"]) == {"bon", "sft"}
    points = results["bon"]["curve"]
    assert [p["n"] for p in points] == [1, 2, 4]
    for p in points:
        assert p["kl"] == pytest.approx(math.log(p["n"]) - (p["n"] - 1) / p["n"])
        assert 0 <= p["gold"] <= 1 and math.isfinite(p["pm"]) and 1 <= p["distinct"] <= p["n"]
        assert set(p["win_rate"]) == {"gold", "pm"}
    # best-of-n_max in the curve is the method bon: the same picks, the same gold scores
    assert points[-1]["gold"] == pytest.approx(results["gold"]["bon"])
    assert points[-1]["win_rate"]["gold"]["value"] == pytest.approx(results["win_rate"]["gold"]["bon_vs_sft"]["value"])
    assert points[-1]["pm"] >= points[0]["pm"] - 1e-6  # the PM's pick never scores below the first sample
    scores = json.loads((run / "scores.json").read_text())
    assert len(scores["gold"]["bon"]) == N and len(scores["pm"]["sft"]) == N
    assert "Best-of-4" in out.stdout and "BoN vs SFT" in out.stdout
    report = (run / "report.md").read_text()
    assert "| BoN vs SFT | gold judge |" in report and "## Best-of-n curve" in report
    assert (run / "bon_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "bon/kl" in r] == [1, 2, 4]
    assert "win_rate/gold/bon_vs_sft" in rows[-1]

    again = run_lab(ray_address, tmp_path / "run2", tmp_path / "cache", "+experiment=bon", "seed=0", *SMALL)
    assert "SFT: reusing cached checkpoint" in again.stdout
    assert "PM: reusing cached preference model" in again.stdout
    assert "EVAL: reusing cached replies" in again.stdout and "(bon-samples)" in again.stdout
    second = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert second["bon"]["curve"][-1]["gold"] == pytest.approx(points[-1]["gold"])
    assert second["cost"]["bon"]["tokens_generated"] == 0  # nothing sampled again
