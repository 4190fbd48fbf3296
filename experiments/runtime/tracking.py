"""Run tracking: ``metrics.jsonl`` in the run dir, and W&B (offline unless WANDB_MODE says)."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

from experiments.config import LoggerConfig


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def namespace(key: str) -> str:
    return key.split("/", 1)[0]


class Tracker:
    """One run's metrics: rows in ``metrics.jsonl`` and, when enabled, a W&B run.

    W&B conventions: ``group`` is the sweep (``logger.group``, or the Hydra sweep dir's name in
    multirun), ``job_type`` the method, ``tags`` name the model and data, and the config is logged
    flattened (``algo.beta``), which is also how W&B sweeps name their parameters. Each stage
    counts its own steps (``sft/step``, ``pm/step``, ``ppo/step``, ...) as W&B step metrics, so
    stages that run one after the other, or at once in ``compare``, never clash on W&B's step.
    Thread-safe: ``compare`` trains PAT and PPO in two threads.
    """

    def __init__(self, run_dir: str | os.PathLike, cfg: LoggerConfig, config: dict[str, Any], job_type: str,
                 group: str | None = None, tags: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._axes: set[str] = set()
        self.wandb = None
        if cfg.wandb:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group or group, job_type=job_type,
                tags=list(dict.fromkeys([*cfg.tags, *(tags or [])])), config=flatten(config), dir=str(self.run_dir),
                mode=os.environ.get("WANDB_MODE", cfg.mode), reinit="finish_previous",
            )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append a row; ``step`` counts within each metric's namespace (``ppo/...`` -> ``ppo/step``)."""
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        if step is not None:
            row["step"] = step
        with self._lock:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            if self.wandb is not None:
                self.wandb.log(self._with_axes(metrics, step))

    def _with_axes(self, metrics: dict[str, Any], step: int | None) -> dict[str, Any]:
        if step is None:
            return metrics
        out = dict(metrics)
        for ns in {namespace(k) for k in metrics}:
            if ns not in self._axes:
                self.wandb.define_metric(f"{ns}/step")
                self.wandb.define_metric(f"{ns}/*", step_metric=f"{ns}/step")
                self._axes.add(ns)
            out[f"{ns}/step"] = step
        return out

    def log_images(self, images: dict[str, Any]) -> None:
        """Log PNG files (already in the run dir) to W&B."""
        if self.wandb is not None:
            import wandb

            with self._lock:
                self.wandb.log({f"report/{k}": wandb.Image(str(v)) for k, v in images.items()})

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def finish(self) -> None:
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish()


class RayMetrics:
    """Export numeric metrics as Ray gauges (``lab_<name>``) so the dashboard's metrics view
    (Prometheus/Grafana) can chart them. A no-op when this process is not connected to Ray."""

    def __init__(self, run: str):
        self.run = run
        self._gauges: dict[str, Any] = {}

    def export(self, metrics: dict[str, Any]) -> None:
        import ray

        if not ray.is_initialized():
            return
        from ray.util.metrics import Gauge

        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = "lab_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            if name not in self._gauges:
                self._gauges[name] = Gauge(name, description=key, tag_keys=("run",))
            self._gauges[name].set(float(value), tags={"run": self.run})
