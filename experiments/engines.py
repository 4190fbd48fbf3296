"""Where samples come from (``rollout.engine``): the policy's own transformers model (``hf``, the
default), or vLLM engines in their own Ray actors (``vllm``, ``actors/rollout_engine.py``).

With ``vllm``:

* ``start_engines`` starts ``ray.rollout.num_actors`` engines on a saved checkpoint (the model
  under evaluation, or the SFT model a PPO policy starts from); prompts are spread over them and
  the replies come back through the object store;
* ``sample_rollouts`` samples PPO's (GRPO's, RLOO's) responses on the engines, then has the policy
  ranks pack them and recompute the old log-probs on the sampled tokens with the trainer's own
  forward pass (``PolicyActor.score_rollout``): the ratio and KL of the update compare the
  trainer's numbers with the trainer's, never vLLM's kernels with the trainer's;
* ``WeightSync.sync`` hands the policy's weights to every engine after each update: through
  Ray's object store (the CPU, or ``rollout.sync=object_store``), or by an NCCL broadcast from policy
  rank 0 (GPUs, ``rollout.sync=nccl``); with LoRA only the layers the adapters change, merged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from actors.group import RoleGroup
from actors.rollout_engine import RolloutEngineActor
from alignment.data.batching import shard
from alignment.rollout import Rollout
from alignment.vllm_generation import EngineSpec
from experiments.config import LabConfig
from experiments.context import RunContext

FUSED = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
"""Projections vLLM fuses into one weight: a partial update must bring all of a group or none."""


def uses_vllm(cfg: LabConfig) -> bool:
    return cfg.rollout.engine == "vllm"


def engine_spec(cfg: LabConfig, path: Path | str) -> EngineSpec:
    r, sleep = cfg.rollout, cfg.ray.colocate and cfg.ray.rollout.num_gpus > 0  # colocated on GPUs: sleep/wake
    return EngineSpec(path=str(path), tokenizer_path=str(path), tensor_parallel_size=r.tensor_parallel_size,
                      dtype=r.dtype, gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_gib=r.kv_cache_gib,
                      enforce_eager=r.enforce_eager, enable_sleep_mode=sleep, seed=cfg.seed)


def start_engines(ctx: RunContext, path: Path | str, role: str, stage: str, pg: Any = None) -> RoleGroup:
    """``ray.rollout.num_actors`` vLLM engines on the checkpoint at ``path``, started (the engines
    load it themselves)."""
    cfg = ctx.cfg
    group = ctx.group(RolloutEngineActor, role, cfg.ray.rollout, cfg.trainer.num_threads, stage, pg=pg)
    try:
        group.call("init_model", engine_spec(cfg, path))
    except BaseException:
        group.shutdown()
        raise
    return group


def sample_rollouts(engines: RoleGroup, policy: RoleGroup, ids: list[list[int]],
                    tools: list[frozenset[str] | None] | None, spec: Any, seed: int, max_calls: int,
                    quality: int | None = None) -> tuple[list[tuple[Rollout, list[str]]], float]:
    """Responses sampled on the engines (each its share of ``ids``), packed by the policy ranks
    (each its share of the rows) with the old log-probs of the trainer's forward pass. Returns,
    per policy rank, its rollout and reply texts (as ``PolicyActor.rollout`` returns them), and
    the mean |vLLM − trainer| log-prob over the sampled tokens."""
    rows = shard(ids, engines.size)
    row_tools = shard(tools, engines.size) if tools is not None and any(tools) else [None] * engines.size
    parts = engines.wait(engines.submit("sample", [(p, spec, seed, t) for p, t in zip(rows, row_tools)],
                                        max_calls=max_calls, quality=quality))
    responses, logprobs, texts = ([x for part in parts for x in part[i]] for i in (0, 1, 3))
    masks = None
    if any(part[2] is not None for part in parts):
        masks = [m for part in parts for m in (part[2] if part[2] is not None else [[1] * len(r) for r in part[0]])]
    share = [shard(x, policy.size) if x is not None else [None] * policy.size
             for x in (ids, responses, masks, texts, logprobs)]
    outs = policy.wait(policy.submit("score_rollout", list(zip(*share)), temperature=spec.temperature))
    gap, n = (sum(o[2][i] for o in outs) for i in (0, 1))
    return [(o[0], o[1]) for o in outs], gap / max(n, 1)


class WeightSync:
    """The policy's weights into the engines after each update (see the module docstring)."""

    def __init__(self, cfg: LabConfig, policy: RoleGroup, engines: RoleGroup):
        self.policy, self.engines = policy, engines
        lora = cfg.model.lora
        targets = set(lora.target_modules)
        # LoRA: only the adapted layers change; vLLM fuses q/k/v and gate/up, so a group goes whole or not at all
        self.only_lora = lora.enabled and all(targets >= g or not (targets & g) for g in FUSED)
        on_gpu = cfg.ray.policy.num_gpus > 0 and cfg.ray.rollout.num_gpus > 0
        self.mode = cfg.rollout.sync if cfg.rollout.sync != "auto" else ("nccl" if on_gpu else "object_store")
        self._joined = False

    def _join_nccl(self) -> None:
        host, port = self.policy.wait([self.policy.actors[0].master_address.remote()])[0]
        tp = self.engines.wait([self.engines.actors[0].tensor_parallel_size.remote()])[0]
        world = 1 + self.engines.size * tp
        refs = [self.policy.actors[0].init_broadcast.remote(host, port, world)]
        refs += [a.init_broadcast.remote(host, port, 1 + i * tp, world) for i, a in enumerate(self.engines.actors)]
        ray.get(refs)
        self._joined = True

    def sync(self) -> float:
        """Push the policy's current weights to every engine; returns the seconds it took."""
        t0 = time.perf_counter()
        if self.mode == "nccl":
            if not self._joined:
                self._join_nccl()
            metas = self.policy.wait([self.policy.actors[0].weight_metas.remote(self.only_lora)])[0]
            sends = self.policy.submit("broadcast_weights", None, only_lora=self.only_lora)  # rank 0 sends
            self.engines.wait(self.engines.submit("receive_broadcast", [(metas,)] * self.engines.size))
            self.policy.wait(sends)
        else:
            # every rank takes part (gathered under ZeRO-3); rank 0's tensors go to the engines as one
            # object in the store, never through the driver
            refs = self.policy.submit("named_weights", None, only_lora=self.only_lora)
            self.engines.wait(self.engines.submit("load_weights", [(refs[0],)] * self.engines.size))
            self.policy.wait(refs[1:])
        return time.perf_counter() - t0
