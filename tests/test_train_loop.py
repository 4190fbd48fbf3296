"""The driver's training loop on a stand-in group (no Ray): sharding, skipping, logging."""

from __future__ import annotations

from experiments.config import TrainerConfig
from experiments.loop import train_loop


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
