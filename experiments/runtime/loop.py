"""The driver-side training loop shared by stages: deal batches to a role's ranks, log what
they report, show progress. The maths runs in the actors."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from actors.group import RoleGroup
from alignment.atomic import atomic_dir, write_json
from alignment.data.batching import shard
from experiments.config import TrainerConfig
from experiments.runtime.cache import Artifact, ArtifactCache, commit
from experiments.runtime.tracking import Tracker


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


STATE = "loop_state.json"


@dataclass
class Checkpoints:
    """Where a stage's ``train_loop`` keeps its checkpoints (``<cache>/<stage>-checkpoints/<key>``:
    the stage's cache key, so only the same config resumes them) and how often (``every`` steps,
    0 for never). Each holds the role's engine (weights, optimizer, schedule) and the loop's state:
    the step, the epoch, the batches of the epoch already dealt and the shuffling RNG at the
    epoch's start, so a resumed loop deals the same batches in the same order."""

    root: Path
    every: int
    keep: int = 1

    def latest(self) -> Path | None:
        found = sorted(p for p in self.root.glob("step_*") if (p / STATE).is_file()) if self.root.is_dir() else []
        return found[-1] if found else None

    def save(self, group: RoleGroup, state: dict[str, Any]) -> Path:
        final = self.root / f"step_{state['step']:06d}"
        with atomic_dir(final, replace=True) as tmp:
            group.call("save_checkpoint", str(tmp / "model"))
            write_json(tmp / STATE, state)
        older = sorted(p for p in self.root.glob("step_*") if p != final)
        for old in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def of(cls, ctx: Any, stage: str, key: str, t: TrainerConfig) -> Checkpoints:
        """The checkpoints of ``stage``'s artifact ``key`` in the run's cache, every ``checkpoint_every``
        steps of trainer ``t`` (a run that ignores the cache, ``use_cache=false``, or is asked to start
        afresh, ``resume=false``, drops them first)."""
        out = cls(ctx.cache.root / f"{stage}-checkpoints" / key, t.checkpoint_every)
        if not ctx.cfg.use_cache or not ctx.cfg.resume:
            out.clear()
        return out

    def clear(self) -> None:
        """Drop them all (the stage's artifact is committed)."""
        shutil.rmtree(self.root, ignore_errors=True)


def commit_trained(cache: ArtifactCache, stage: str, key: str, payload: dict[str, Any], group: RoleGroup,
                   info: dict[str, Any], what: str, checkpoints: Checkpoints,
                   files: dict[str, Any] | None = None) -> Artifact:
    """A stage's tail once its ``train_loop`` is done: save the model held by ``group`` and ``info`` as
    the artifact (``experiments.runtime.cache.commit``, ``files`` beside it), then drop the checkpoints it was trained
    through. In that order: a run that fails while saving keeps them and resumes from them."""
    art = commit(cache, stage, key, payload, group, info, what, files)
    checkpoints.clear()
    return art


def _rng_state(state: Any) -> Any:
    """``random.Random.getstate()`` back from JSON (lists to tuples)."""
    return (state[0], tuple(state[1]), state[2])


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
    checkpoints: Checkpoints | None = None, prepare: Callable[[list[Any]], list[Any]] | None = None,
    step_offset: int = 0,
) -> dict[str, float]:
    """Run ``t.epochs`` over ``items``: each step calls ``method`` on every rank with its shard.

    Ranks report stats with a ``weight_key`` count (tokens, pairs); the logged value of each
    stat is its weighted mean over ranks, except ``lr`` and ``grad_norm`` (global, from rank 0).
    A batch with fewer items than the group has ranks (an epoch's short last batch) is skipped:
    every rank of a data-parallel step needs an item. ``call_kwargs`` go to every call of ``method``
    (e.g. ``spec=``). With ``checkpoints`` the loop saves every ``checkpoints.every`` steps and, when
    one of the same stage and key is there, resumes from the newest (a stage interrupted by a crash,
    a kill or a lost actor continues where it was, and ends with the same weights). ``prepare`` turns
    each batch into what the ranks get (Quark adds the reference's outputs to its examples), and
    ``step_offset`` is added to the steps logged (a stage that trains in rounds logs one axis).
    """
    steps = total_steps(len(items), t)
    rng = random.Random(seed)
    step, last, first_epoch, skip = 0, {}, 0, 0
    latest = checkpoints.latest() if checkpoints is not None else None
    if latest is not None and json.loads((latest / STATE).read_text()).get("items") != len(items):
        print(f"{name.upper()}: {latest} was made on other data ({len(items)} items now); starting afresh",
              flush=True)
        checkpoints.clear()
        latest = None
    if latest is not None:
        state = json.loads((latest / STATE).read_text())
        group.call("load_checkpoint", str(latest / "model"))
        step, last, first_epoch, skip = state["step"], state["last"], state["epoch"], state["dealt"]
        rng.setstate(_rng_state(state["rng"]))
        print(f"{name.upper()}: resuming from step {step} of {steps} ({latest})", flush=True)
    window_weight, window_start = 0.0, time.time()

    def flush() -> None:  # log the newest stats with the throughput since the previous log
        nonlocal window_weight, window_start
        rate = window_weight / max(time.time() - window_start, 1e-9)
        tracker.log(last | {f"{name}/{weight_key}_per_s": rate}, step=step + step_offset)
        window_weight, window_start = 0.0, time.time()

    with tqdm(total=steps, initial=step, desc=name, unit="step", dynamic_ncols=True) as bar:
        for epoch_index in range(first_epoch, t.epochs):
            at_start = rng.getstate()  # what deals this epoch's batches again on resume
            epoch = batcher(items, t.batch_size, rng) if batcher else batches(items, t.batch_size, rng)
            dealt = 0
            for batch in epoch:
                if step >= steps:
                    break
                dealt += 1
                if dealt <= skip:  # dealt before the checkpoint this loop resumed from
                    continue
                if len(batch) < group.size:
                    continue
                if prepare is not None:
                    batch = prepare(batch)
                results = group.call_sharded(method, shard(batch, group.size), **(call_kwargs or {}))
                step += 1
                window_weight += sum(r[weight_key] for r in results)
                last = {f"{name}/{k}": v for k, v in rank_mean(results, weight_key).items()}
                check_finite(last, name, step)
                bar.update(1)
                bar.set_postfix(loss=f"{last[f'{name}/loss']:.3f}")
                if step % t.log_every == 0:
                    flush()
                if checkpoints is not None and checkpoints.every and step % checkpoints.every == 0:
                    checkpoints.save(group, {"step": step, "epoch": epoch_index, "dealt": dealt, "rng": at_start,
                                             "last": last, "items": len(items)})
            skip = 0
    if window_weight:  # the steps since the last log
        flush()
    return last | {f"{name}/steps": step}
