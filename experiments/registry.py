"""Which driver runs each ``stage`` (set by ``+experiment=<name>``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from experiments.commands import chat, compare
from experiments.reports import sweep_report
from experiments.stages import bon, dpo, pat, pm, ppo, quark, sft

DRIVERS: dict[str, Callable[..., dict[str, Any]]] = {
    "sft": sft.run,
    "pm": pm.run,
    "pat": pat.run,
    "ppo": ppo.run,
    "grpo": ppo.run,  # the PPO loop with algo.advantage=grpo, no critic (conf/algo/grpo.yaml)
    "rloo": ppo.run,  # the PPO loop with algo.advantage=rloo, no critic (conf/algo/rloo.yaml)
    "compare": compare.run,
    "bon": bon.run,
    "dpo": dpo.run,
    "quark": quark.run,
    "report": sweep_report.run,
    "chat": chat.run,
}
