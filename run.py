"""The lab's one entry point: ``python run.py +experiment=sft`` (Hydra composes the run)."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from experiments.config import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        lab = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        presets = sorted(f.stem for f in (Path(__file__).parent / "conf" / "experiment").glob("*.yaml"))
        sys.exit(f"config error: {err.full_key} is required. Choose an experiment, e.g. "
                 f"`python run.py +experiment=sft` (available: {', '.join(presets)})")
    # Ray starts (several seconds of processes coming up) while this thread imports the drivers
    # and opens the W&B run; the report reads finished runs and needs no cluster
    ray_start = RayStart(lab.ray) if lab.stage != "report" else None

    from alignment.atomic import write_json, write_text
    from experiments.registry import DRIVERS

    if lab.stage not in DRIVERS:
        sys.exit(f"config error: stage={lab.stage!r} has no driver; choose from {sorted(DRIVERS)}")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_text(run_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    from experiments.cache import ArtifactCache, cache_root
    from experiments.context import RunContext
    from experiments.tracking import Tracker

    container = OmegaConf.to_container(cfg, resolve=True)
    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None  # one W&B group per sweep
    model = Path(lab.model.path).name if lab.model.name == "pretrained" and lab.model.path else lab.model.name
    data = Path(lab.data.path).stem if lab.data.source != "world" and lab.data.path else lab.data.source
    tracker = Tracker(run_dir, lab.logger, container, job_type=lab.stage, group=group,
                      tags=[f"model:{model}", f"data:{data}"])
    try:
        if ray_start is not None:
            ray_start.wait()
        ctx = RunContext(lab, run_dir, ArtifactCache(cache_root(lab.cache_dir)), tracker,
                         run_tag=f"{lab.stage}-{uuid.uuid4().hex[:6]}")
        try:
            results = DRIVERS[lab.stage](ctx)
            results["wall_seconds"] = time.time() - ctx.started
            tracker.summary({"wall_seconds": results["wall_seconds"]})
            write_json(run_dir / "results.json", results)
            print(f"Run dir: {run_dir} (metrics.jsonl, resolved_config.yaml, results.json)")
        finally:
            ctx.close()
    finally:
        tracker.finish()


class RayStart:
    """``init_ray`` on a background thread; ``wait`` joins it and re-raises its error."""

    def __init__(self, cfg: Any):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cfg,), name="ray-start", daemon=True)
        self.thread.start()

    def _run(self, cfg: Any) -> None:
        from actors.session import init_ray

        try:
            init_ray(cfg)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


if __name__ == "__main__":
    main()
