"""Which driver runs each ``stage`` (set by ``+experiment=<name>``): every row of the stage table
(``experiments.stages.chain.STAGES``, each with its own ``run``) and the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from experiments.commands import chat, compare
from experiments.reports import sweep_report
from experiments.stages.chain import STAGES

DRIVERS: dict[str, Callable[..., dict[str, Any]]] = {
    **{name: stage.run for name, stage in STAGES.items()},
    "compare": compare.run,
    "report": sweep_report.run,
    "chat": chat.run,
}
