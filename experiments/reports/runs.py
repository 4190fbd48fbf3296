"""A finished sweep's jobs, read from their folders: each job's stage, seed, ``results.json``,
``scores.json``, ``metrics.jsonl`` and the overrides that set it apart (its variant)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


@dataclass
class Run:
    path: Path
    stage: str
    seed: int
    results: dict[str, Any]
    scores: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    variant: tuple[str, ...] = ()  # the job's Hydra overrides other than its method and seed


_METHOD_OR_SEED = re.compile(r"^[+~]{0,2}(experiment|seed)=")
# where a job ran and how it was logged, not what it trained: never a knob of the sweep
_WHERE_NOT_WHAT = re.compile(r"^[+~]{0,2}(ray|logger|hydra)[.=]")


def overrides_of(job_dir: Path) -> tuple[str, ...]:
    """The Hydra overrides a job ran with (``.hydra/overrides.yaml``), without its method
    (``+experiment=``), its seed and where it ran (``ray.*``, ``logger.*``, ``hydra.*``): what a knob
    sweep varies. Empty for a job without the file."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ()
    return tuple(sorted(str(o) for o in OmegaConf.load(path)
                        if not _METHOD_OR_SEED.match(str(o)) and not _WHERE_NOT_WHAT.match(str(o))))


def by_variant(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped by the overrides that differ between them besides method and seed (a
    knob sweep such as ``algo.beta=0.01,0.05``), each group labelled by those overrides; a sweep
    over methods and seeds only is one group labelled ``""``. The report pairs methods and
    averages seeds within a group, never across groups."""
    common = set.intersection(*(set(r.variant) for r in runs)) if runs else set()
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[" ".join(o for o in r.variant if o not in common)].append(r)
    return dict(groups)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not valid JSON ({err.msg})") from err
    return rows


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every finished job under ``sweep_dir`` (a ``results.json`` beside a ``resolved_config.yaml``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir: {sweep_dir} is not a directory")
    runs = []
    for res in sorted(sweep_dir.glob("**/results.json")):
        cfg_path = res.parent / "resolved_config.yaml"
        if res.parent == sweep_dir or not cfg_path.is_file():
            continue
        cfg = OmegaConf.load(cfg_path)
        if "stage" not in cfg or "seed" not in cfg:
            raise ValueError(f"{cfg_path}: no 'stage' or 'seed' key; is this a lab run?")
        scores = res.parent / "scores.json"
        runs.append(Run(res.parent, str(cfg.stage), int(cfg.seed), _json(res),
                        _json(scores) if scores.is_file() else None, _jsonl(res.parent / "metrics.jsonl"),
                        overrides_of(res.parent)))
    return runs
