"""The evaluation-reply cache: replies of a policy to held-out prompts, keyed by (model, prompts,
quality tag, sampling settings, seed). Every stage that samples test replies with the run's fixed
sampling settings reads and writes it, so no model answers the same prompts twice in a chain or
a sweep (the SFT stage's own evaluation becomes the SFT side of every later head-to-head)."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from actors.group import RoleGroup
from actors.policy import PolicyActor
from alignment.atomic import write_json
from alignment.chat_format import Conversation, generation_prompt
from alignment.data.batching import shard
from alignment.data.formats import FilePrompt
from alignment.tools import enabled_tools
from alignment.world import WorldPrompt
from experiments.config import LabConfig, as_key
from experiments.runtime.context import RunContext
from experiments.runtime.engines import (
    rollout_key,
    sample_on_engines,
    score_samples,
    shares_gpu,
    start_engines,
    uses_vllm,
)
from experiments.runtime.specs import model_spec, sampling_spec, strategy_spec

STAGE = "replies"
FILE = "replies.json"


@dataclass
class Job:
    """Replies wanted from one policy: ``prompts`` answered under an optional quality tag."""

    prompts: list[WorldPrompt] | list[FilePrompt]
    quality: int | None = None


def sampler_key(cfg: LabConfig) -> dict[str, Any]:
    """What else than ``eval.*`` shapes sampled replies: the tools (replies with tools differ) and
    the engine (nothing for hf)."""
    return ({f"tools_{k}": v for k, v in as_key(cfg.tools).items()}
            | {f"rollout_{k}": v for k, v in rollout_key(cfg).items()})


def sampling_key(cfg: LabConfig) -> dict[str, Any]:
    """The evaluation's sampling settings, as they enter the key of replies sampled with them."""
    sampling = as_key(cfg.eval)
    sampling.pop("n_prompts")  # the prompt digest already says which prompts
    sampling.pop("evaluate_init")
    return sampling | sampler_key(cfg)


def replies_key(ctx: RunContext, model_path: Path, job: Job) -> str:
    texts = [generation_prompt(p.conversation(), job.quality) for p in job.prompts]
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    payload = {"model": str(model_path), "prompts": digest, "sampling": sampling_key(ctx.cfg), "seed": ctx.cfg.seed}
    if ctx.cfg.model.chat_format == "template":  # prompted in the model's chat template (MOSS's format: no entry)
        payload["chat_format"] = "template"
    return ctx.cache_key(STAGE, payload)


def load_replies(ctx: RunContext, key: str) -> list[str] | None:
    """The cached replies with ``key``, or ``None`` (also when the run ignores the cache)."""
    hit = ctx.cache.get(STAGE, key) if ctx.cfg.use_cache else None
    return json.loads((hit / FILE).read_text()) if hit is not None else None


def save_replies(ctx: RunContext, key: str, name: str, model_path: Path, replies: list[str]) -> None:
    """Cache ``replies`` (job ``name`` of the model at ``model_path``) under ``key``, atomically."""
    with ctx.cache.put(STAGE, key, {"model": str(model_path), "job": name}) as tmp:
        write_json(tmp / FILE, replies)


def tool_rows(cfg: LabConfig, convs: list[Conversation]) -> list[frozenset[str] | None]:
    """Per conversation, the tools its meta-instruction enables when ``tools.enabled`` (None: a plain
    reply, as every reply is with tools off): which rows go through the passes of tool use."""
    return [(enabled_tools(c.meta_instruction) or None) if cfg.tools.enabled else None for c in convs]


def rollouts(group: RoleGroup, ids: list[list[int]], tools: list[frozenset[str] | None] | None, spec: Any,
             seed: int, max_calls: int, quality: int | None = None, engines: RoleGroup | None = None) -> list[Any]:
    """Each rank's ``PolicyActor.rollout`` of its share of ``ids``; with ``tools`` (``tool_rows``) a
    rank gets its rows' tools too, and ``quality`` is the tag the program writes after a tool row's
    ``<|MOSS|>:``. With ``engines`` (vLLM) the engines sample and the policy ranks pack and score
    (``experiments.runtime.engines.sample_on_engines``, ``score_samples``)."""
    if engines is not None:
        return score_samples(group, ids, sample_on_engines(engines, ids, tools, spec, seed, max_calls, quality),
                             spec.temperature)[0]
    if tools is None or not any(tools):
        return group.call_sharded("rollout", shard(ids, group.size), spec=spec, seed=seed)
    shares = [(part, spec, seed, on) for part, on in zip(shard(ids, group.size), shard(tools, group.size))]
    return group.wait(group.submit("rollout", shares, max_calls=max_calls, quality=quality))


def generate(ctx: RunContext, group: RoleGroup, prompts: list[WorldPrompt] | list[FilePrompt],
             quality: int | None = None) -> list[str]:
    """The group's replies to ``prompts`` with the run's fixed sampling settings (``reply_all``)."""
    return reply_all(ctx, group, [p.conversation() for p in prompts], sampling_spec(ctx.cfg), ctx.cfg.seed, quality)


def reply_all(ctx: RunContext, group: RoleGroup, convs: list[Conversation], sampling: Any, seed: int,
              quality: int | None = None) -> list[str]:
    """The group's reply to each conversation (sharded over ranks), each prompted in the model's own
    format (``SamplingRole.reply_to``) with ``quality`` opening it; with ``tools.enabled``,
    conversations whose meta-instruction switches tools on go through the two passes of tool use
    (``PolicyActor.generate_tools``)."""
    cfg = ctx.cfg
    with_tools = [t is not None for t in tool_rows(cfg, convs)]
    out: list[str | None] = [None] * len(convs)
    if any(with_tools):
        tooled = [i for i, t in enumerate(with_tools) if t]
        for i, reply in zip(tooled, group.map_sharded(
                "generate_tools", [convs[i] for i in tooled], sampling=sampling,
                batch_size=cfg.eval.batch_size, seed=seed, quality=quality, max_calls=cfg.tools.max_calls)):
            out[i] = reply
    plain = [i for i, t in enumerate(with_tools) if not t]
    if plain:
        for i, reply in zip(plain, group.map_sharded("reply_to", [convs[i] for i in plain], sampling=sampling,
                                                     batch_size=cfg.eval.batch_size, seed=seed, quality=quality)):
            out[i] = reply
    return out


def generate_with(ctx: RunContext, model_path: Path, jobs: dict[str, Job], role: str,
                  progress: tqdm | None = None, stage: str = "eval",
                  threads: int | None = None) -> dict[str, list[str]]:
    """Every job's replies from the policy at ``model_path``: cached ones are read back, the rest
    are generated on one policy group and cached (``progress`` counts the prompts answered; the
    group's cost joins ``stage``; ``threads``: its ranks' torch threads, default ``trainer.num_threads``)."""
    cfg = ctx.cfg
    keys = {name: replies_key(ctx, model_path, job) for name, job in jobs.items()}
    out: dict[str, list[str]] = {}
    for name, key in keys.items():
        cached = load_replies(ctx, key)
        if cached is not None:
            out[name] = cached
            if progress is not None:
                progress.update(len(jobs[name].prompts))
    todo = [name for name in jobs if name not in out]
    if not todo:
        print(f"EVAL: reusing cached replies of {model_path.name} ({', '.join(jobs)})", flush=True)
        return out
    if uses_vllm(cfg):  # the engines sample with the policy's calls (actors/sampling.py)
        group = start_engines(ctx, model_path, f"{role}-rollout", stage)
    else:
        group = ctx.group(PolicyActor, role, cfg.ray.policy, threads or cfg.trainer.num_threads, stage)
    try:
        if not uses_vllm(cfg):
            group.call("init_model", model_spec(cfg, model_path, str(model_path)),
                       strategy_spec(cfg, cfg.ray.policy.num_gpus > 0), None)
        for name in todo:
            out[name] = generate(ctx, group, jobs[name].prompts, jobs[name].quality)
            save_replies(ctx, keys[name], name, model_path, out[name])
            if progress is not None:
                progress.update(len(jobs[name].prompts))
    finally:
        group.shutdown()
    return {name: out[name] for name in jobs}


def side_by_side(cfg: LabConfig, n: int, cpus: float | None = None) -> tuple[int, int]:
    """How ``n`` policy groups sample: (groups side by side, torch threads per rank). Engines on a
    shared GPU go one at a time (they start one at a time); on GPUs all go at once with
    ``trainer.num_threads``. On CPUs the cluster's cores (``cpus``, default Ray's count) are shared
    out: at most one group per core's worth of ranks, each rank with its share of the cores, never
    more than ``trainer.num_threads``, so that torch's threads never outnumber the cores (threads
    that do slow each other down far more than they gain)."""
    threads = max(cfg.trainer.num_threads, 1)
    if shares_gpu(cfg):
        return 1, threads
    if cfg.ray.policy.num_gpus > 0:
        return max(n, 1), threads
    if cpus is None:
        import ray

        cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else float(os.cpu_count() or 1)
    ranks = max(cfg.ray.policy.num_actors, 1)
    groups = max(1, min(n, int(cpus // ranks)))
    return groups, max(1, min(threads, int(cpus // (groups * ranks))))


def generate_many(ctx: RunContext, work: dict[str, tuple[Path, dict[str, Job]]]) -> dict[str, list[str]]:
    """``generate_with`` for several models at once (``{role: (model, jobs)}``), one policy group
    each, side by side as far as the cores allow (``parallel_groups``)."""
    total = sum(len(job.prompts) for _, jobs in work.values() for job in jobs.values())
    workers, threads = side_by_side(ctx.cfg, len(work))
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=total, desc="eval replies") as bar:
        futures = [pool.submit(generate_with, ctx, path, jobs, role, bar, threads=threads)
                   for role, (path, jobs) in work.items()]
        out: dict[str, list[str]] = {}
        for f in futures:
            out |= f.result()
    return out
