"""A lost node survived: on a simulated two-node Ray cluster (``ray.cluster_utils.Cluster``) PPO places
the policy and the preference model on the head and the critic and the reference on the second node;
that node is removed mid-run; the run finishes on the head after a restart, records it under
``restarts`` and ends with the weights and final metrics of an uninterrupted run.

The cluster lives in a subprocess (``benchmarks/faults.py --lose-node``), so the session's shared Ray
instance (``tests/conftest.py``) is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.lab import ROOT


def test_ppo_survives_losing_the_node_of_the_critic_and_the_reference(tmp_path):
    out = tmp_path / "faults.json"
    cmd = [sys.executable, "benchmarks/faults.py", "--lose-node", "--iterations", "6", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and out.is_file(), (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    run, reference = result["runs"][0], result["reference"]
    lost = run["killed"]
    assert lost is not None, "the run finished before the node could be removed"
    assert {"critic", "reference"} <= set(lost["roles_on_it"]) and "policy" in lost["roles_elsewhere"]
    assert run["returncode"] == 0 and run["restarts"] == 1, proc.stdout[-4000:]
    assert run["digest"] == reference["digest"] and run["matched"]
