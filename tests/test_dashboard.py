"""The Ray dashboard a user opens: a PPO run on its own local Ray (dashboard on, token
authentication as Ray 2.60 sets it), its four named roles listed by the dashboard's HTTP API with
the token from ``ray get-auth-token``, and the lab's gauges on Ray's metrics endpoint."""

from __future__ import annotations

import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from scripts.dashboard_screenshot import ROLES, live_roles, stop
from tests.lab import ROOT

SMALL = ["data.n_train=240", "trainer.batch_size=8", "pm.n_prompts=16", "pm.n_val_prompts=6", "eval.n_prompts=8",
         "eval.max_new_tokens=16", "logger.wandb=false", "ray.num_cpus=2"]


def _get(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _until(check: Callable[[], object], proc: subprocess.Popen, what: str, lines: list[str], limit: float = 300):
    """Poll ``check`` (a query of the live run) until it returns something truthy, while the run lives."""
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before {what}:\n" + "".join(lines[-40:])
        found = check()
        if found:
            return found
        time.sleep(1.0)  # polling a live server's answer, not waiting in place of a signal
    raise AssertionError(f"no {what} within {limit} s:\n" + "".join(lines[-40:]))


def test_dashboard_lists_the_ppo_roles_and_metrics_carry_the_lab_gauges(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "run.py", "+experiment=ppo", f"cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={tmp_path / 'run'}", *SMALL, "algo.iterations=400", "algo.rollout_batch_size=8",
           "algo.max_new_tokens=16", "algo.checkpoint_every=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    urls: queue.Queue[tuple[str, str]] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            m = re.match(r"(Ray dashboard|Ray metrics[^:]*): (http\S+)", line)
            if m:
                urls.put((m.group(1), m.group(2)))

    threading.Thread(target=read, daemon=True).start()
    try:
        dashboard = urls.get(timeout=180)
        metrics = urls.get(timeout=30)
        assert dashboard[0] == "Ray dashboard" and metrics[0].startswith("Ray metrics")
        assert any("ray get-auth-token" in line for line in lines)
        token = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token"], capture_output=True,
                               text=True, env=env, check=True).stdout.strip()
        assert token and not any(token in line for line in lines)  # the run never prints the token

        status, body = _get(f"{dashboard[1]}/api/v0/actors?limit=1000", None)
        assert status == 401 and "token" in body.lower()

        def roles() -> set[str]:
            return live_roles(dashboard[1], token)

        assert _until(lambda: roles() == set(ROLES), proc, "the four PPO roles", lines) is True

        def gauge() -> str | None:
            status, body = _get(metrics[1], None)
            # Ray prefixes application metrics with ray_
            return next((line for line in body.splitlines() if line.startswith("ray_lab_ppo_reward{")), None)

        line = _until(gauge, proc, "ray_lab_ppo_reward on the metrics endpoint", lines)
        assert 'run="ppo-' in line and math.isfinite(float(line.rsplit(" ", 1)[1]))
    finally:
        stop(proc)
