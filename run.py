"""The lab's one entry point: ``python run.py +experiment=sft`` (Hydra composes the run)."""

from __future__ import annotations

import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from experiments.config import cluster_args, register
from experiments.validation import validate

register()


def load_drivers() -> dict:
    """The driver of each stage (``experiments/registry.py``: ``DRIVERS["ppo"]`` is ``experiments.stages.ppo.run``)."""
    from experiments.registry import DRIVERS

    return DRIVERS


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        lab = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        presets = sorted(f.stem for f in (Path(__file__).parent / "conf" / "experiment").glob("*.yaml"))
        sys.exit(f"config error: {err.full_key} is required. Choose an experiment, e.g. "
                 f"`python run.py +experiment=sft` (available: {', '.join(presets)})")
    from experiments.preflight import preflight
    from experiments.runtime.cache import cache_root

    try:
        validate(lab)
        preflight(lab)  # every user path expanded, every input file read, every judge reached
    except ValueError as err:
        sys.exit(f"config error: {err}")
    # the drivers (torch, transformers) import on a thread while Ray starts on this one: Linux
    # kills Ray's processes when the thread that started them ends, so that must be the main one.
    # Ray itself is imported first, so the two threads never wait on each other's imports.
    from actors.session import init_ray

    with ThreadPoolExecutor(max_workers=1) as pool:
        importing = pool.submit(load_drivers)
        if lab.stage not in ("report", "chat"):  # the report reads finished runs, chat runs here: no cluster
            init_ray(**cluster_args(lab.ray, lab.rollout.engine))
        DRIVERS = importing.result()

    from alignment.atomic import write_json, write_text
    from experiments.runtime.cache import ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.runtime.tracking import Tracker

    if lab.stage not in DRIVERS:
        sys.exit(f"config error: stage={lab.stage!r} has no driver; choose from {sorted(DRIVERS)}")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_text(run_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    container = OmegaConf.to_container(cfg, resolve=True)
    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None  # one W&B group per sweep
    model = Path(lab.model.path).name if lab.model.name == "pretrained" and lab.model.path else lab.model.name
    data = Path(lab.data.path).stem if lab.data.source != "world" and lab.data.path else lab.data.source
    tracker = Tracker(run_dir, lab.logger, container, job_type=lab.stage, group=group,
                      tags=[f"model:{model}", f"data:{data}"])
    ctx = RunContext(lab, run_dir, ArtifactCache(cache_root(lab.cache_dir), replace=not lab.use_cache), tracker,
                     run_tag=f"{lab.stage}-{uuid.uuid4().hex[:6]}")
    try:
        results = DRIVERS[lab.stage](ctx)
        results["wall_seconds"] = time.time() - ctx.started
        tracker.summary({"wall_seconds": results["wall_seconds"]})
        write_json(run_dir / "results.json", results)
        print(f"Run dir: {run_dir} (metrics.jsonl, resolved_config.yaml, results.json)")
    finally:
        ctx.close()
        tracker.finish()


if __name__ == "__main__":
    main()
