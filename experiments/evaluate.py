"""Head-to-head evaluation driver: policies generate on held-out test prompts with fixed
sampling; the gold judge and the preference model score every reply; pairs of policies get
win / tie / lose shares and win rates with bootstrap intervals (``alignment/winrate.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actors.group import RoleGroup
from actors.policy import PolicyActor
from actors.preference import PreferenceActor
from alignment.models.tokenizer import load_tokenizer
from alignment.sequences import scored_sequence
from alignment.winrate import outcomes, win_rate
from alignment.world import WorldPrompt
from experiments.context import RunContext
from experiments.sft import generate, model_spec, strategy_spec


@dataclass
class Job:
    """Replies wanted from one policy: ``prompts`` answered under an optional quality tag."""

    prompts: list[WorldPrompt]
    quality: int | None = None


def generate_with(ctx: RunContext, model_path: Path, jobs: dict[str, Job], role: str) -> dict[str, list[str]]:
    """Load the policy at ``model_path`` on a policy group and run every job on it."""
    cfg = ctx.cfg
    group = RoleGroup(PolicyActor, role, cfg.ray.policy, cfg.trainer.num_threads, run_tag=ctx.run_tag)
    try:
        group.call("init_model", model_spec(cfg, model_path, str(model_path)),
                   strategy_spec(cfg, cfg.ray.policy.num_gpus > 0), None)
        return {name: generate(ctx, group, job.prompts, job.quality) for name, job in jobs.items()}
    finally:
        group.shutdown()


def pm_scores(ctx: RunContext, pm_path: Path, tokenizer_dir: Path, prompts: list[WorldPrompt],
              replies: dict[str, list[str]]) -> dict[str, list[float]]:
    """The preference model's score of every reply, per policy."""
    cfg = ctx.cfg
    tokenizer = load_tokenizer(str(tokenizer_dir))
    group = RoleGroup(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads,
                      run_tag=ctx.run_tag)
    try:
        group.call("init_model", str(pm_path), False, strategy_spec(cfg, cfg.ray.preference.num_gpus > 0))
        out = {}
        for name, texts in replies.items():
            seqs = [scored_sequence(tokenizer, p.conversation(), r, cfg.pm.max_length, cfg.pm.context_turns)
                    for p, r in zip(prompts, texts)]
            out[name] = group.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)
        return out
    finally:
        group.shutdown()


def head_to_head(ctx: RunContext, gold: dict[str, list[float]], pm: dict[str, list[float]],
                 pairs: list[tuple[str, str]]) -> dict[str, dict[str, dict]]:
    """``{judge: {"a_vs_b": {value, ci, win, tie, lose, n}}}`` for every pair, judged by the
    gold judge and by the preference model (the layout of ``results.json``)."""
    seed = ctx.cfg.seed
    out: dict[str, dict[str, dict]] = {"gold": {}, "pm": {}}
    for judge, scores in (("gold", gold), ("pm", pm)):
        for a, b in pairs:
            w = win_rate(outcomes(scores[a], scores[b]), seed=seed).as_dict()
            out[judge][f"{a}_vs_{b}"] = {"value": w["win_rate"], "ci": [w["ci_low"], w["ci_high"]],
                                         "win": w["win"], "tie": w["tie"], "lose": w["lose"], "n": w["n"]}
    return out
