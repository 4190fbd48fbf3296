"""The evaluation every single-method run ends with (``+experiment=pat``, ``dpo``, ``ppo`` and its
kin): the method's and the SFT model's replies to the held-out prompts, judged (``judge_jobs``), its
reward-KL point (``frontier_points``), the head-to-head, the common part of ``results.json``, and
the tracker's metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.evaluation.equal_kl import control_prompts, final_kls, job_at_kl, sft_point
from experiments.evaluation.head_to_head import (
    Judged,
    frontier_points,
    head_to_head,
    judge_jobs,
    method_results,
    samples,
)
from experiments.evaluation.replies import Job
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext


@dataclass
class Versus:
    """A method judged against SFT (and the ``others`` it met): the judged replies, the win rates,
    the policies in the head-to-head, and the method's reward-KL point."""

    judged: Judged
    wins: dict[str, dict[str, dict]]
    policies: tuple[str, ...]
    point: Any
    sft_point: dict[str, Any]  # the SFT model's own samples, measured alike: the reference of the equal-KL table


def versus_sft(ctx: RunContext, name: str, made: Artifact, sft: Artifact, pm: Artifact, jobs: dict[str, Job],
               tags: Sequence[int | None] = (None,), others: dict[str, tuple[Path, Job]] | None = None) -> Versus:
    """``name``'s ``jobs`` (its own replies under the job named ``name``) against SFT, and against each
    of ``others`` (``{policy: (model, job)}``), in the cost span ``eval``; its frontier point on the
    first ``pat.control_prompts`` test prompts under each of ``tags``."""
    prompts = ctx.test_prompts
    work = {f"{name}-eval": (made.path, jobs), "sft-eval": (sft.path, {"sft": Job(prompts)})}
    pairs = [(name, "sft")]
    for other, (path, job) in (others or {}).items():
        work[f"{other}-eval"] = (path, {other: job})
        pairs.append((name, other))
    policies = (name, "sft", *(others or {}))
    with ctx.costs.span("eval"):
        judged = judge_jobs(ctx, work, pm.path, sft.path, prompts, policies, pairs)
        point = frontier_points(ctx, name, made.path, sft.path, pm.path, control_prompts(ctx), list(tags))
        reference = sft_point(ctx, sft.path, pm.path)
    return Versus(judged, head_to_head(ctx, judged, pairs), policies, point, reference)


def method_run_results(ctx: RunContext, v: Versus, name: str, made: Artifact, sft: Artifact, pm: Artifact,
                       pm_summary: dict[str, Any], own: dict[str, Any], frontier: dict[str, Any] | None = None,
                       artifacts: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's ``results.json``: the preference model's ``pm_summary``, the head-to-head, the
    method's ``own`` section(s), its frontier (``frontier`` adds to its point and SFT's), the final
    KL measured alike (``kl.final.<name>``; ``own["kl"]`` adds to it) and the equal-KL table
    (``at_kl``), the cost, the artifacts (the trained models' directories in the cache;
    ``artifacts`` adds to them), what came from the cache, and a few sample replies."""
    points = {name: v.point, "sft": v.sft_point, **(frontier or {})}
    return {
        "pm": pm_summary,
        **method_results(ctx, v.judged, v.wins, v.policies),
        **own,
        "kl": {"final": final_kls(points, ctx.cfg.pat.inference_tag), **own.get("kl", {})},
        "at_kl": job_at_kl(points),
        "frontier": points,
        "cost": ctx.costs.summary(),
        "artifacts": {"sft": str(sft.path), "pm": str(pm.path), name: str(made.path), **(artifacts or {})},
        "cached": {"sft": sft.cached, "pm": pm.cached, name: made.cached},
        "samples": samples(ctx.test_prompts, v.judged.replies, ("sft", name)),
    }


def publish(ctx: RunContext, results: dict[str, Any], flat: dict[str, float],
            print_summary: Callable[[dict[str, Any]], None], images: dict[str, Path] | None = None) -> dict[str, Any]:
    """Log ``flat`` (the run's metrics) and ``images`` to the tracker, print the summary, return ``results``."""
    ctx.tracker.log(flat)
    ctx.tracker.summary(flat)
    if images:
        ctx.tracker.log_images(images)
    print_summary(results)
    return results
