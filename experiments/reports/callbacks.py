"""Hydra callbacks: the sweep report when a multirun ends (registered in ``conf/config.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class SweepReport(Callback):
    """After ``python run.py -m ...``: build the report of the sweep dir from its finished jobs
    (``experiments/reports/sweep_report.py``) and log it to W&B in the sweep's group."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from experiments.config import LoggerConfig
        from experiments.reports.runs import load_runs
        from experiments.reports.sweep_report import build, log_to_wandb, print_summary
        from experiments.runtime.tracking import Tracker

        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(r.scores for r in load_runs(sweep_dir)):
            print(f"Sweep report: no judged runs under {sweep_dir} (only pat, ppo and compare judge policies)")
            return
        r, images = build(sweep_dir)
        logger = LoggerConfig(**OmegaConf.to_container(config.logger, resolve=True)) if "logger" in config \
            else LoggerConfig(wandb=False)
        tracker = Tracker(sweep_dir, logger, {"sweep_dir": str(sweep_dir), "seeds": r["seeds"]}, job_type="report",
                          group=sweep_dir.name, tags=["sweep-report"])
        try:
            log_to_wandb(r, images, tracker)
        finally:
            tracker.finish()
        print_summary(r, sweep_dir)
