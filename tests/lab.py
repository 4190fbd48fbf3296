"""Running the lab's entry point in a subprocess, joined to the test session's Ray instance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_lab(ray_address: str, run_dir: Path, cache: Path, *overrides: str,
            multirun: bool = False) -> subprocess.CompletedProcess:
    """``python run.py`` with ``overrides`` (``-m``: a multirun whose sweep dir is ``run_dir``)."""
    if not any(o.startswith("+experiment=") for o in overrides):
        overrides = ("+experiment=sft", *overrides)
    where = [f"hydra.sweep.dir={run_dir}"] if multirun else [f"hydra.run.dir={run_dir}"]
    cmd = [sys.executable, "run.py", *(["-m"] if multirun else []), f"ray.address={ray_address}",
           f"cache_dir={cache}", *where, *overrides]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out
