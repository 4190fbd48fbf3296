"""What a composed config decides beyond its own keys, next to the schema (``experiments/config.py``):
the judges a run calls and where the preference model's labelled pairs come from. Validation checks
these choices, preflight reaches the judges, and the stages act on them."""

from __future__ import annotations

from experiments.config import LabConfig

RL_STAGES = ("ppo", "grpo", "rloo")  # the stages that run the PPO loop; their presets set algo.advantage
EVALUATING_METHODS = ("pat", "ppo", "grpo", "rloo", "compare", "bon", "dpo", "quark")  # the stages with a head-to-head


def eval_judges(lab: LabConfig) -> list[str]:
    """The head-to-head's judges: ``eval.judges``, or gold and pm on the world's prompts, pm on a file's."""
    if lab.eval.judges is not None:
        return list(lab.eval.judges)
    return ["gold", "pm"] if lab.eval.prompts_path is None else ["pm"]


def pm_feedback(lab: LabConfig) -> str:
    """Where the preference model's labelled pairs come from: world, data or judge."""
    if lab.pm.feedback != "auto":
        return lab.pm.feedback
    return "data" if (lab.pm.data_path or lab.pm.multi_response_path) else "world"


def judges_used(lab: LabConfig) -> list[str]:
    """The judges the run will call: the evaluation's (for the stages that evaluate methods) and
    the preference model's AI feedback (``pm.feedback=judge``)."""
    used = eval_judges(lab) if lab.stage in EVALUATING_METHODS else []
    if pm_feedback(lab) == "judge" and lab.stage != "sft" and lab.pm.judge not in used:
        used.append(lab.pm.judge)
    return used
