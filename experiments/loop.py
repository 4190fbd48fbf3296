"""The driver-side training loop shared by stages: deal batches to a role's ranks, log what
they report, show progress. The maths runs in the actors."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from actors.group import RoleGroup
from alignment.data.batching import shard
from experiments.config import TrainerConfig
from experiments.tracking import Tracker


def total_steps(n_items: int, t: TrainerConfig) -> int:
    per_epoch = math.ceil(n_items / t.batch_size)
    return per_epoch * t.epochs if t.max_steps < 0 else min(t.max_steps, per_epoch * t.epochs)


class NonFiniteError(RuntimeError):
    """A loss, reward, gradient norm or other statistic came out NaN or infinite."""


def check_finite(stats: dict[str, Any], stage: str, step: int) -> None:
    """Stop the run at the step that made a NaN or infinity, naming the stage, the step and every
    quantity that is not finite (nothing is committed; the last checkpoint stays as it was)."""
    bad = {k: v for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"{stage}: step {step}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
                             + "; stopping before anything is saved (lower the learning rate, or check the "
                             "data and the reward)")


def batches(items: Sequence[Any], batch_size: int, rng: random.Random):
    """One epoch of shuffled batches."""
    idx = rng.sample(range(len(items)), len(items))
    for start in range(0, len(idx), batch_size):
        yield [items[i] for i in idx[start:start + batch_size]]


def rank_mean(results: Sequence[dict[str, float]], weight_key: str) -> dict[str, float]:
    """Join what the ranks of a role report: each stat's mean weighted by ``weight_key`` (tokens,
    pairs) over the ranks that report it (a rank without PTX examples has no ``ptx_loss``), except
    learning rates and gradient norms (``.../lr``, ``.../grad_norm``), which are global and taken
    from the first rank that has them."""
    out = {}
    for k in dict.fromkeys(k for r in results for k in r):
        if k == weight_key:
            continue
        have = [r for r in results if k in r]
        if k.rsplit("/", 1)[-1] in ("lr", "grad_norm"):
            out[k] = have[0][k]
        else:
            out[k] = sum(r[k] * r[weight_key] for r in have) / max(sum(r[weight_key] for r in have), 1e-9)
    return out


def train_loop(
    group: RoleGroup, method: str, items: Sequence[Any], t: TrainerConfig, tracker: Tracker, name: str,
    weight_key: str, seed: int, batcher=None, call_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run ``t.epochs`` over ``items``: each step calls ``method`` on every rank with its shard.

    Ranks report stats with a ``weight_key`` count (tokens, pairs); the logged value of each
    stat is its weighted mean over ranks, except ``lr`` and ``grad_norm`` (global, from rank 0).
    A batch with fewer items than the group has ranks (an epoch's short last batch) is skipped:
    every rank of a data-parallel step needs an item. ``call_kwargs`` go to every call of ``method``
    (e.g. ``spec=``).
    """
    steps = total_steps(len(items), t)
    rng = random.Random(seed)
    step, last = 0, {}
    window_weight, window_start = 0.0, time.time()

    def flush() -> None:  # log the newest stats with the throughput since the previous log
        nonlocal window_weight, window_start
        rate = window_weight / max(time.time() - window_start, 1e-9)
        tracker.log(last | {f"{name}/{weight_key}_per_s": rate}, step=step)
        window_weight, window_start = 0.0, time.time()

    with tqdm(total=steps, desc=name, unit="step", dynamic_ncols=True) as bar:
        for _ in range(t.epochs):
            epoch = batcher(items, t.batch_size, rng) if batcher else batches(items, t.batch_size, rng)
            for batch in epoch:
                if step >= steps:
                    break
                if len(batch) < group.size:
                    continue
                results = group.call_sharded(method, shard(batch, group.size), **(call_kwargs or {}))
                step += 1
                window_weight += sum(r[weight_key] for r in results)
                last = {f"{name}/{k}": v for k, v in rank_mean(results, weight_key).items()}
                check_finite(last, name, step)
                bar.update(1)
                bar.set_postfix(loss=f"{last[f'{name}/loss']:.3f}")
                if step % t.log_every == 0:
                    flush()
    if window_weight:  # the steps since the last log
        flush()
    return last | {f"{name}/steps": step}
