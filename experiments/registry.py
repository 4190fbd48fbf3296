"""Which driver runs each ``stage`` (set by ``+experiment=<name>``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from experiments import compare, pat, pm, ppo, sft, sweep_report

DRIVERS: dict[str, Callable[..., dict[str, Any]]] = {
    "sft": sft.run,
    "pm": pm.run,
    "pat": pat.run,
    "ppo": ppo.run,
    "compare": compare.run,
    "report": sweep_report.run,
}
