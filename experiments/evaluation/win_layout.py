"""The layout of one win rate in ``results.json`` and the sweep's ``aggregate.json``:
``{value, ci, win, tie, lose, n}``, and what its writer adds after them (``lc``, ``seeds``)."""

from __future__ import annotations

from typing import Any

from alignment.statistics.winrate import WinRate


def win_entry(w: WinRate, **extra: Any) -> dict[str, Any]:
    """``w`` as ``results.json`` holds it, with ``extra`` keys after the shares and ``n``."""
    return {"value": w.win_rate, "ci": [w.ci_low, w.ci_high], "win": w.win, "tie": w.tie, "lose": w.lose,
            "n": w.n, **extra}
