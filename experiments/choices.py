"""What a composed config decides beyond its own keys, next to the schema (``experiments/config.py``):
the judges a run calls and where the preference model's labelled pairs come from. Validation checks
these choices, preflight reaches the judges, and the stages act on them."""

from __future__ import annotations

from experiments.config import LabConfig

# The stages by what they do. Every stage not named here is a method (a row of the stage table,
# ``experiments.stages.chain.STAGES``, and a driver), so a new method is counted in each rule below
# without an edit here.
CHAIN = ("sft", "pm")  # the stages every method builds on
READERS = ("report", "chat")  # read what other runs made: they train and evaluate nothing
RL_STAGES = ("ppo", "grpo", "rloo")  # the stages that run the PPO loop; their presets set algo.advantage
NO_HEAD_TO_HEAD = (*CHAIN, *READERS)  # every other stage (each method, compare) judges head to head


def evaluates(stage: str) -> bool:
    """Whether the stage's SFT model answers the held-out prompts (every stage but the readers)."""
    return stage not in READERS


def uses_pm(stage: str) -> bool:
    """Whether the stage trains (or loads) the preference model: every stage after SFT but the readers."""
    return stage not in ("sft", *READERS)


def runs_rl_loop(stage: str) -> bool:
    """Whether the stage may run the PPO loop (its roles, ``algo.*`` and ``algo.prompts_path``): an RL
    stage, or compare (which runs the RL methods among its own)."""
    return stage in (*RL_STAGES, "compare")


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
    used = eval_judges(lab) if lab.stage not in NO_HEAD_TO_HEAD else []
    if pm_feedback(lab) == "judge" and lab.stage != "sft" and lab.pm.judge not in used:
        used.append(lab.pm.judge)
    return used
