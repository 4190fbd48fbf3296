"""Methods read at equal KL: interpolation on a path (never extrapolated), win rates against the SFT
model's samples, one job's table and the table over seeds, and where PPO saves its path."""

from __future__ import annotations

import pytest

from alignment.statistics.equal_kl import at_budget, t_interval, win_share


def test_value_at_a_budget_is_interpolated_on_the_first_segment_that_reaches_it():
    kls, gold = [0.0, 0.4, 1.2, 0.9, 3.0], [0.30, 0.40, 0.60, 0.50, 0.20]
    assert at_budget(kls, gold, 0.4) == pytest.approx(0.40)  # a point on the budget
    assert at_budget(kls, gold, 1.0) == pytest.approx(0.40 + 0.20 * 0.6 / 0.8)  # first crossing, not the later one
    assert at_budget(kls, gold, 2.0) == pytest.approx(0.50 - 0.30 * 1.1 / 2.1)
    assert at_budget(kls, gold, 3.5) is None  # never extrapolated
    assert at_budget([0.8, 1.5], [0.5, 0.6], 0.5) is None  # nor below the path's first point


def test_win_share_counts_ties_half():
    assert win_share([1.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.5, 0.2]) == pytest.approx((2 + 0.5) / 4)


def test_t_interval_is_wider_than_the_three_values_range_at_95_percent():
    lo, hi = t_interval([0.60, 0.64, 0.70])
    assert lo < 0.60 and hi > 0.70 and (lo + hi) / 2 == pytest.approx(0.64666666)


def _point(kl: float, golds: list[float], **extra) -> dict:
    return {"kl": kl, "gold": sum(golds) / len(golds), "golds": golds, "pm": 0.0, **extra}


def _ppo_frontier(final_golds: list[float], final_kl: float) -> dict:
    sft = _point(0.0, [0.5, 0.5, 0.5, 0.5], tag=None, step=0)
    return {"sft": sft, "ppo_path": [_point(final_kl / 2, [0.6, 0.5, 0.4, 0.5], tag=None, step=20)],
            "ppo": [_point(final_kl, final_golds, tag=None)]}


def test_one_jobs_table_reads_the_path_from_the_sft_point_through_the_snapshots():
    from experiments.evaluation.equal_kl import final_kls, job_at_kl, paths

    frontier = _ppo_frontier([0.9, 0.9, 0.1, 0.5], 2.0)
    assert [p["kl"] for p in paths(frontier)["ppo"]] == [0.0, 1.0, 2.0]
    table = job_at_kl(frontier, budgets=(0.5, 1.5, 4.0))
    assert table["0.5"]["ppo"]["gold"] == pytest.approx((0.5 + 0.5) / 2)
    # win rates against the SFT samples: 0.5 (all ties) at KL 0, 0.5 at 1 (one win, one loss), 0.625 at 2
    assert table["1.5"]["ppo"]["win_rate"] == pytest.approx((0.5 + 0.625) / 2)
    assert table["4"]["ppo"] == {"gold": None, "win_rate": None, "kl_range": [0.0, 2.0], "kl_bound": False}
    assert final_kls(frontier, 100) == {"ppo": 2.0}


def test_quarks_path_starts_at_its_round_1_not_at_sft():
    """Quark's round 1 is the PAT model: no trained policy lies between SFT and it, so its path runs
    over its rounds only, and a budget below round 1's KL has no figure (as PAT's tags)."""
    from experiments.evaluation.equal_kl import job_at_kl, paths

    sft = _point(0.0, [0.5, 0.5], tag=None, step=0)
    frontier = {"sft": sft, "quark_path": [_point(4.0, [0.7, 0.6], tag=100, step=1)],
                "quark": [_point(3.0, [0.8, 0.6], tag=100, step=2)]}
    assert [p["kl"] for p in paths(frontier)["quark"]] == [4.0, 3.0]
    table = job_at_kl(frontier, budgets=(1.0, 3.5))
    assert table["1"]["quark"]["gold"] is None and table["1"]["quark"]["kl_range"] == [3.0, 4.0]
    assert table["3.5"]["quark"]["gold"] == pytest.approx((0.65 + 0.7) / 2)


def test_pat_path_goes_by_tag_and_best_of_n_is_flagged_as_a_bound():
    from experiments.evaluation.equal_kl import job_at_kl, paths

    sft = _point(0.0, [0.5, 0.5], tag=None, step=0)
    pat = [_point(1.0, [0.9, 0.7], tag=100), _point(0.2, [0.3, 0.5], tag=0), _point(0.5, [0.5, 0.6], tag=50)]
    bon = [_point(0.0, [0.5, 0.5], n=1, kl_bound=True), _point(1.0, [0.7, 0.6], n=4, kl_bound=True)]
    frontier = {"sft": sft, "pat": pat, "bon_path": bon}
    assert [p["tag"] for p in paths(frontier)["pat"]] == [0, 50, 100]
    table = job_at_kl(frontier, budgets=(0.5,))["0.5"]
    assert table["pat"]["gold"] == pytest.approx(0.55) and not table["pat"]["kl_bound"]
    assert table["bon"]["kl_bound"] and table["bon"]["gold"] == pytest.approx(0.575)


def test_the_sweep_table_averages_seeds_with_a_t_interval_and_needs_every_seed_to_reach_a_budget():
    from experiments.evaluation.equal_kl import job_at_kl, sweep_at_kl

    jobs = [job_at_kl(_ppo_frontier(golds, kl), budgets=(1.5, 2.5))
            for golds, kl in (([0.9, 0.9, 0.1, 0.5], 2.0), ([0.7, 0.6, 0.5, 0.5], 2.0), ([0.6, 0.6, 0.6, 0.6], 3.0))]
    cell = sweep_at_kl(jobs)["1.5"]["ppo"]
    assert cell["seeds"] == 3 and cell["reached"] == 3
    assert cell["gold_ci"][0] < cell["gold"] < cell["gold_ci"][1]
    far = sweep_at_kl(jobs)["2.5"]["ppo"]
    assert far["reached"] == 1 and far["gold"] is None  # two seeds never got there: no mean of the survivor


def test_ppo_saves_its_path_at_evenly_spaced_iterations_before_the_last():
    from experiments.config import PPOConfig
    from experiments.stages.ppo import snapshot_steps

    assert snapshot_steps(PPOConfig(iterations=40, path_points=3)) == {10, 20, 30}
    assert snapshot_steps(PPOConfig(iterations=40, path_points=0)) == set()
    assert snapshot_steps(PPOConfig(iterations=2, path_points=4)) == {1}


def test_report_sentences_claim_a_lead_only_when_the_intervals_separate():
    from experiments.evaluation.equal_kl import at_kl_markdown, at_kl_sentences

    names = {"pat": "PAT", "ppo": "PPO", "bon": "best-of-n"}
    table = {"1": {"pat": {"win_rate": 0.70, "win_rate_ci": [0.65, 0.75], "gold": 0.6, "gold_ci": [0.5, 0.7],
                           "seeds": 3, "reached": 3, "kl_bound": False},
                   "ppo": {"win_rate": 0.55, "win_rate_ci": [0.50, 0.60], "gold": 0.5, "gold_ci": [0.4, 0.6],
                           "seeds": 3, "reached": 3, "kl_bound": False}},
             "2": {"pat": {"win_rate": 0.70, "win_rate_ci": [0.60, 0.80], "gold": 0.6, "gold_ci": [0.5, 0.7],
                           "seeds": 3, "reached": 3, "kl_bound": False},
                   "bon": {"win_rate": 0.65, "win_rate_ci": [0.62, 0.68], "gold": 0.5, "gold_ci": [0.4, 0.6],
                           "seeds": 3, "reached": 3, "kl_bound": True},
                   "ppo": {"win_rate": None, "gold": None, "seeds": 3, "reached": 1, "kl_range": [0.0, 2.1],
                           "kl_bound": False}}}
    first, second = at_kl_sentences(table, names)
    assert "PAT" in first and "lies above every other" in first
    assert "overlaps those of best-of-n" in second and "no lead" in second
    md = "\n".join(at_kl_markdown(table, names))
    assert "best-of-n (analytic KL bound)" in md and "off the path (1/3 seeds reach it; the path spans 0.00–2.10" in md
