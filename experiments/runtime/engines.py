"""Where samples come from (``rollout.engine``): the policy's own transformers model (``hf``, the
default), or vLLM engines in their own Ray actors (``vllm``, ``actors/rollout_engine.py``).

With ``vllm``:

* ``start_engines`` starts ``ray.rollout.num_actors`` engines on a saved checkpoint (the model
  under evaluation, or the SFT model a PPO policy starts from); prompts are spread over them and
  the replies come back through the object store;
* ``sample_on_engines`` samples PPO's (GRPO's, RLOO's) responses on the engines, then
  ``score_samples`` has the policy ranks pack them and recompute the old log-probs on the sampled
  tokens with the trainer's own forward pass (``PolicyActor.score_rollout``): the ratio and KL of the update compare the
  trainer's numbers with the trainer's, never vLLM's kernels with the trainer's;
* ``EngineSync.sync`` hands the policy's weights to every engine after each update: through
  Ray's object store (the CPU, or ``rollout.sync=object_store``), or by an NCCL broadcast from policy
  rank 0 (GPUs, ``rollout.sync=nccl``); with LoRA only the layers the adapters change, merged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.group import RoleGroup
from actors.rollout_engine import RolloutEngineActor
from alignment.data.batching import shard
from alignment.rollout import Rollout
from alignment.vllm_generation import EngineSpec, adapted_layers_suffice
from experiments.config import LabConfig, as_key
from experiments.runtime.context import RunContext


def uses_vllm(cfg: LabConfig) -> bool:
    return cfg.rollout.engine == "vllm"


def rollout_key(cfg: LabConfig) -> dict[str, Any]:
    """What the engine adds to the key of anything it samples: nothing for ``hf`` (keys stay as
    they were), the engine's settings for ``vllm``."""
    return as_key(cfg.rollout) if uses_vllm(cfg) else {}


def sleeps(cfg: LabConfig) -> bool:
    """Whether the engines share the trainers' GPUs and sleep while they run (``ray.colocate`` on GPUs)."""
    return uses_vllm(cfg) and cfg.ray.colocate and cfg.ray.rollout.num_gpus > 0


def shares_gpu(cfg: LabConfig) -> bool:
    """Whether an engine's GPU may hold another role or engine (``ray.colocate``, or a share of a GPU):
    then engines start one at a time after the other roles have loaded, since vLLM sizes its KV
    cache by the memory left free and its profiling fails if another process frees memory meanwhile."""
    share = cfg.ray.rollout.num_gpus
    return uses_vllm(cfg) and share > 0 and (cfg.ray.colocate or share < 1)


def sync_mode(cfg: LabConfig) -> str:
    """``rollout.sync``, with ``auto`` resolved: an NCCL broadcast between the policy's and the
    engines' own whole GPUs; through the object store on the CPU, and with shares of a GPU or
    colocated (one GPU may hold policy rank 0 and an engine, and NCCL takes no two ranks on one
    device)."""
    if cfg.rollout.sync != "auto":
        return cfg.rollout.sync
    own_gpus = cfg.ray.policy.num_gpus >= 1 and cfg.ray.rollout.num_gpus >= 1 and not cfg.ray.colocate
    return "nccl" if own_gpus else "object_store"


def engine_spec(cfg: LabConfig, path: Path | str) -> EngineSpec:
    r = cfg.rollout
    return EngineSpec(path=str(path), tokenizer_path=str(path), tensor_parallel_size=r.tensor_parallel_size,
                      dtype=r.dtype, gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_gib=r.kv_cache_gib,
                      enforce_eager=r.enforce_eager, enable_sleep_mode=sleeps(cfg), seed=cfg.seed,
                      max_model_len=r.max_model_len)


def start_engines(ctx: RunContext, path: Path | str, role: str, stage: str, pg: Any = None,
                  after: Callable[[], Any] | None = None) -> RoleGroup:
    """``ray.rollout.num_actors`` vLLM engines on the checkpoint at ``path`` (the engines load it
    themselves), started. ``after`` waits for the other roles' loading: the engines load side by
    side with it, or, on a shared GPU (``shares_gpu``), once it is done and one after another."""
    cfg = ctx.cfg
    # a fresh process per engine: vLLM 0.32 cannot start a second engine in a process that has since
    # imported numba (the search tool's bm25s does), so engine actors are never lent to a later stage
    group = ctx.group(RolloutEngineActor, role, cfg.ray.rollout, cfg.trainer.num_threads, stage, pg=pg,
                      pooled=False)
    spec = engine_spec(cfg, path)
    try:
        if shares_gpu(cfg):
            if after is not None:
                after()
            for actor in group.actors:
                group.wait([actor.init_model.remote(spec=spec)])
        else:
            refs = group.submit("init_model", None, spec=spec)
            if after is not None:
                after()
            group.wait(refs)
    except BaseException:
        group.shutdown()
        raise
    return group


def sample_on_engines(engines: RoleGroup, ids: list[list[int]], tools: list[frozenset[str] | None] | None,
                      spec: Any, seed: int, max_calls: int, quality: int | None = None) -> list[Any]:
    """Responses to ``ids`` sampled on the engines, each engine its share of the rows: per engine,
    what ``SamplingRole.sample`` returns (responses, log-probs, masks or None, reply texts)."""
    rows = shard(ids, engines.size)
    row_tools = shard(tools, engines.size) if tools is not None and any(tools) else [None] * engines.size
    return engines.wait(engines.submit("sample", [(p, spec, seed, t) for p, t in zip(rows, row_tools)],
                                       max_calls=max_calls, quality=quality))


def score_samples(policy: RoleGroup, ids: list[list[int]], parts: list[Any], temperature: float,
                  ) -> tuple[list[tuple[Rollout, list[str]]], float]:
    """The engines' samples (``sample_on_engines``) packed by the policy ranks, each its share of the
    rows, with the old log-probs of the trainer's forward pass (``PolicyActor.score_rollout``).
    Returns, per policy rank, its rollout and reply texts (as ``PolicyActor.rollout`` returns them),
    and the mean |vLLM − trainer| log-prob over the sampled tokens."""
    responses, logprobs, texts = ([x for part in parts for x in part[i]] for i in (0, 1, 3))
    masks = None
    if any(part[2] is not None for part in parts):
        masks = [m for part in parts for m in (part[2] if part[2] is not None else [[1] * len(r) for r in part[0]])]
    share = [shard(x, policy.size) if x is not None else [None] * policy.size
             for x in (ids, responses, masks, logprobs)]
    outs = policy.wait(policy.submit("score_rollout", list(zip(*share)), temperature=temperature))
    gap, n = (sum(o[1][i] for o in outs) for i in (0, 1))
    return [(o[0], t) for o, t in zip(outs, shard(texts, policy.size))], gap / max(n, 1)


def wait_all(refs: list[Any]) -> list[Any]:
    """``ray.get`` of ``refs`` that raises the first failure at once, while other calls still wait
    (a sender that fails must not leave the driver waiting on receivers that never get data)."""
    pending, failed = list(refs), None
    while pending and failed is None:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready)
        except Exception as err:  # noqa: BLE001 - re-raised below, first failure first
            failed = err
    if failed is not None:
        raise failed
    return ray.get(refs)


class EngineSync:
    """The policy's weights into the engines after each update (see the module docstring)."""

    def __init__(self, cfg: LabConfig, policy: RoleGroup, engines: RoleGroup):
        self.policy, self.engines = policy, engines
        lora = cfg.model.lora
        # LoRA: only the adapted layers change, when vLLM's fused projections allow it
        self.only_lora = lora.enabled and adapted_layers_suffice(lora.target_modules)
        self.mode = sync_mode(cfg)
        self.dtype: str | None = None  # the engines' weight dtype: the policy casts to it before sending
        self.metas: list[Any] | None = None  # names, dtypes and shapes of the broadcast: fixed for a run

    def _join_nccl(self) -> None:
        host, port = self.policy.wait([self.policy.actors[0].master_address.remote()])[0]
        tp = self.engines.wait([self.engines.actors[0].tensor_parallel_size.remote()])[0]
        world = 1 + self.engines.size * tp
        refs = [self.policy.actors[0].init_broadcast.remote(host, port, world)]
        refs += [a.init_broadcast.remote(host, port, 1 + i * tp, world) for i, a in enumerate(self.engines.actors)]
        wait_all(refs)
        # every rank takes part (gathered under ZeRO-3); rank 0's names, dtypes and shapes
        self.metas = self.policy.wait(self.policy.submit("weight_metas", None, only_lora=self.only_lora,
                                                         dtype=self.dtype))[0]

    def sync(self) -> float:
        """Push the policy's current weights to every engine; returns the seconds it took."""
        t0 = time.perf_counter()
        if self.dtype is None:
            self.dtype = self.engines.wait([self.engines.actors[0].weight_dtype.remote()])[0]
        if self.mode == "nccl":
            if self.metas is None:
                self._join_nccl()
            sends = self.policy.submit("broadcast_weights", None, only_lora=self.only_lora, dtype=self.dtype)
            wait_all(sends + self.engines.submit("receive_broadcast", [(self.metas,)] * self.engines.size))
        else:
            # every rank takes part (gathered under ZeRO-3); rank 0's tensors go to the engines as one
            # object in the store, never through the driver
            refs = self.policy.submit("named_weights", None, only_lora=self.only_lora, dtype=self.dtype)
            wait_all(refs[1:] + self.engines.submit("load_weights", [(refs[0],)] * self.engines.size))
        return time.perf_counter() - t0
