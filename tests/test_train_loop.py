"""The driver's training loop on a stand-in group (no Ray): sharding, skipping, logging."""

from __future__ import annotations

import pytest

from experiments.config import TrainerConfig
from experiments.runtime.loop import NonFiniteError, check_finite, train_loop


class TwoRanks:
    size = 2

    def __init__(self):
        self.calls: list[list[list[int]]] = []

    def call_sharded(self, method, shards):
        assert method == "step"
        self.calls.append(shards)
        return [{"loss": float(sum(s)), "n": float(len(s))} for s in shards]


class Logs:
    def __init__(self):
        self.rows = []

    def log(self, row, step=None):
        self.rows.append((step, row))


def test_a_short_last_batch_is_skipped_so_every_rank_gets_items():
    group, logs = TwoRanks(), Logs()
    # 5 items in batches of 2: the epoch's last batch has one item, fewer than the two ranks
    last = train_loop(group, "step", list(range(5)), TrainerConfig(epochs=2, batch_size=2, log_every=3), logs,
                      "pm", "n", seed=0)
    assert len(group.calls) == 4 and all(len(s) == 1 for shards in group.calls for s in shards)
    assert last["pm/steps"] == 4
    # logged at step 3, and the step after it once the loop ended early
    assert [step for step, _ in logs.rows] == [3, 4]
    assert all("pm/n_per_s" in row for _, row in logs.rows)


class NaNAtStep(TwoRanks):
    """Ranks whose loss turns NaN (rank 0) at the ``bad``-th call, and infinite gradient norm (rank 1)."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad = bad

    def call_sharded(self, method, shards):
        out = super().call_sharded(method, shards)
        if len(self.calls) == self.bad:
            out[0]["loss"] = float("nan")
            out[1]["grad_norm"] = float("inf")
        return out


def test_a_nan_stops_the_loop_at_the_step_that_made_it_naming_what():
    group, logs = NaNAtStep(bad=3), Logs()
    with pytest.raises(NonFiniteError, match=r"^sft: step 3: sft/loss = nan, sft/grad_norm = inf; stopping"):
        train_loop(group, "step", list(range(20)), TrainerConfig(batch_size=2, log_every=1), logs, "sft", "n", seed=0)
    assert len(group.calls) == 3 and [step for step, _ in logs.rows] == [1, 2]  # nothing after the bad step


def test_finite_stats_pass_and_non_numbers_are_ignored():
    check_finite({"a": 1.0, "b": -3.5, "note": "text", "n": 4}, "pm", 1)
    with pytest.raises(NonFiniteError, match=r"ppo: step 7: ppo/reward = -inf"):
        check_finite({"ppo/reward": float("-inf")}, "ppo", 7)
